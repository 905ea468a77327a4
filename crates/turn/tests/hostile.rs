#![allow(clippy::unwrap_used)]
//! Hostile input against turnd: table-driven malformed and borderline packets into the sans-IO
//! `Responder::handle`, a seeded random-bytes and random-mutation loop, and the real UDP/TCP
//! drivers (in-process, on 127.0.0.1 port 0) fed garbage, oversized and split frames, a
//! slowloris and a request flood against the rate limiter.
//!
//! Every answer, whatever the input, is checked against the invariants a public server must
//! keep: it fits the buffer, it respects the amplification bound (IP + UDP headers counted), it
//! parses, it carries the request's transaction ID and method, and it goes back to the source.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stun::credentials::error_code;
use stun::rfc5780::{BindingRequest, BindingResponse};
use stun::wire::{
    self, BINDING, CHANGE_IP, CHANGE_PORT, Class, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES,
    Message, MessageWriter, WireError, attr, message_type,
};
use turn::binding::{Drop, Listener, Reply, Responder, ResponderConfig, Transport};
use turn::server::{RunningServer, ServerConfig, Stats};

// ---------------------------------------------------------------------------------------------
// Servers, packets and the reply invariants.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// RFC 5780: two IPs, two ports.
    Rfc5780,
    /// Plain RFC 8489 Binding server.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn responder(server: Server, family: Family, amplification: usize) -> Responder {
    let (primary, alt): (SocketAddr, IpAddr) = match family {
        Family::V4 => (
            "192.0.2.1:3478".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        ),
        Family::V6 => (
            "[2001:db8::1]:3478".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        ),
    };
    let alternate = (server == Server::Rfc5780).then_some((alt, 3479));
    let mut cfg = ResponderConfig::new(primary, alternate);
    cfg.amplification = amplification;
    Responder::new(cfg)
}

fn client(family: Family) -> SocketAddr {
    match family {
        Family::V4 => "198.51.100.9:40000".parse().unwrap(),
        Family::V6 => "[2001:db8:ffff::99]:40000".parse().unwrap(),
    }
}

const ID: [u8; 12] = [0x42; 12];

/// A message with a correct length field and zero-padded attributes, nothing validated.
fn raw(msg_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&msg_type.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    v.extend_from_slice(&ID);
    for (t, value) in attrs {
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        v.extend_from_slice(value);
        v.resize(v.len().next_multiple_of(4), 0);
    }
    set_len(v)
}

/// Patch the header length field to the body length (saturating at 0xFFFF).
fn set_len(mut v: Vec<u8>) -> Vec<u8> {
    let body = u16::try_from(v.len().saturating_sub(HEADER_LEN)).unwrap_or(u16::MAX);
    if v.len() >= 4 {
        v[2..4].copy_from_slice(&body.to_be_bytes());
    }
    v
}

fn with_len(mut v: Vec<u8>, len: u16) -> Vec<u8> {
    v[2..4].copy_from_slice(&len.to_be_bytes());
    v
}

/// A Binding request.
fn req(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    raw(message_type(BINDING, Class::Request), attrs)
}

/// A Binding request ending with a correct FINGERPRINT.
fn fingerprinted(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut buf, message_type(BINDING, Class::Request), &ID).unwrap();
    for (t, value) in attrs {
        w.attribute(*t, value).unwrap();
    }
    w.fingerprint().unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// `n` attributes of type `t`, all empty.
fn many(t: u16, n: usize) -> Vec<u8> {
    let mut v = req(&[]);
    for _ in 0..n {
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
    }
    set_len(v)
}

fn hdr(src: &SocketAddr) -> usize {
    if src.is_ipv4() { 28 } else { 48 }
}

/// Run one packet and check every invariant of a reply; returns the verdict and, for an
/// answer, its bytes.
fn handle_with(
    r: &Responder,
    t: Transport,
    local: Listener,
    src: SocketAddr,
    packet: &[u8],
    out_len: usize,
) -> (Result<Reply, Drop>, Vec<u8>) {
    let mut out = vec![0u8; out_len];
    let verdict = r.handle(t, local, src, packet, &mut out);
    let Ok(reply) = verdict else {
        return (verdict, vec![]);
    };
    let ctx = || {
        format!(
            "packet {:02x?} -> {reply:?}",
            &packet[..packet.len().min(48)]
        )
    };
    assert!(reply.len <= out.len(), "{}: longer than the buffer", ctx());
    let a = r.config().amplification;
    assert!(
        reply.len + hdr(&src) <= a * (packet.len() + hdr(&src)),
        "{}: amplification bound x{a} broken",
        ctx()
    );
    let request = Message::parse(packet).unwrap_or_else(|e| panic!("{}: answered {e}", ctx()));
    assert_eq!(request.class(), Class::Request, "{}", ctx());
    let bytes = out[..reply.len].to_vec();
    let m = Message::parse(&bytes).unwrap_or_else(|e| panic!("{}: reply unparsable: {e}", ctx()));
    assert_eq!(m.transaction_id(), request.transaction_id(), "{}", ctx());
    assert_eq!(m.method(), request.method(), "{}", ctx());
    assert_eq!(
        reply.to.ip(),
        src.ip(),
        "{}: must go back to the source",
        ctx()
    );
    assert!(r.config().address(reply.from).is_some(), "{}", ctx());
    if m.get(attr::FINGERPRINT).is_some() {
        assert_eq!(m.check_fingerprint(), Ok(true), "{}", ctx());
    }
    match reply.error {
        None => {
            assert_eq!(m.class(), Class::Success, "{}", ctx());
            let resp = BindingResponse::parse(&bytes).unwrap();
            assert_eq!(resp.xor_mapped, Some(src), "{}", ctx());
            assert_eq!(resp.response_origin, r.config().address(reply.from));
            assert!(resp.padding.unwrap_or(0) <= r.config().max_padding);
        }
        Some(code) => {
            assert_eq!(m.class(), Class::Error, "{}", ctx());
            assert_eq!(error_code(&m).map(|(c, _)| c), Some(code), "{}", ctx());
            assert_eq!((reply.from, reply.to), (local, src), "{}", ctx());
        }
    }
    (verdict, bytes)
}

fn handle(
    r: &Responder,
    t: Transport,
    local: Listener,
    src: SocketAddr,
    packet: &[u8],
) -> (Result<Reply, Drop>, Vec<u8>) {
    handle_with(r, t, local, src, packet, 2048)
}

// ---------------------------------------------------------------------------------------------
// The table.

/// What a case must produce.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A success response, sent to the source port unless `to_port` says otherwise, with
    /// PADDING of `padding` bytes (`None`: no PADDING).
    Success {
        padding: Option<usize>,
        to_port: Option<u16>,
    },
    /// An error response with this code and these UNKNOWN-ATTRIBUTES.
    Error(u16, &'static [u16]),
    /// Exactly this drop.
    Dropped(Drop),
}

const OK: Want = Want::Success {
    padding: None,
    to_port: None,
};

fn padded(n: usize) -> Want {
    Want::Success {
        padding: Some(n),
        to_port: None,
    }
}

fn malformed(e: WireError) -> Want {
    Want::Dropped(Drop::Malformed(e))
}

#[derive(Debug)]
struct Case {
    name: String,
    server: Server,
    transport: Transport,
    packet: Vec<u8>,
    want: Want,
}

fn case(name: &str, packet: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.to_owned(),
        server: Server::Rfc5780,
        transport: Transport::Udp,
        packet,
        want,
    }
}

impl Case {
    fn plain(mut self) -> Self {
        self.server = Server::Plain;
        self
    }

    fn tcp(mut self) -> Self {
        self.transport = Transport::Tcp;
        self
    }
}

/// The expected sending listener of a success: the receiving one, changed as CHANGE-REQUEST
/// asks.
fn expected_from(local: Listener, packet: &[u8]) -> Listener {
    let m = Message::parse(packet).unwrap();
    let change = match m.get(attr::CHANGE_REQUEST).map(|a| a.value) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    };
    Listener {
        ip: local.ip ^ u8::from(change & CHANGE_IP != 0),
        port: local.port ^ u8::from(change & CHANGE_PORT != 0),
    }
}

fn run_case(c: &Case, family: Family, local: Listener) {
    let r = responder(c.server, family, 3);
    let src = client(family);
    let (verdict, bytes) = handle(&r, c.transport, local, src, &c.packet);
    let ctx = format!(
        "case {:?} ({:?}, {:?}, {:?}, {local:?})",
        c.name, c.server, c.transport, family
    );
    match (c.want, verdict) {
        (Want::Success { padding, to_port }, Ok(reply)) => {
            assert_eq!(reply.error, None, "{ctx}");
            assert_eq!(reply.from, expected_from(local, &c.packet), "{ctx}");
            assert_eq!(reply.to.port(), to_port.unwrap_or(src.port()), "{ctx}");
            let resp = BindingResponse::parse(&bytes).unwrap();
            assert!(resp.success, "{ctx}");
            assert_eq!(resp.padding, padding, "{ctx}");
            assert_eq!(resp.mapped, Some(src), "{ctx}");
            let other = r.config().address(Listener {
                ip: local.ip ^ 1,
                port: local.port ^ 1,
            });
            assert_eq!(resp.other_address, other, "{ctx}");
        }
        (Want::Error(code, unknown), Ok(reply)) => {
            assert_eq!(reply.error, Some(code), "{ctx}");
            let resp = BindingResponse::parse(&bytes).ok();
            let m = Message::parse(&bytes).unwrap();
            let listed: Vec<u16> = m
                .get(attr::UNKNOWN_ATTRIBUTES)
                .map(|a| {
                    a.value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(listed, unknown, "{ctx}: UNKNOWN-ATTRIBUTES");
            if let Some(resp) = resp {
                assert!(!resp.success, "{ctx}");
            }
        }
        (Want::Dropped(want), Err(got)) => assert_eq!(got, want, "{ctx}"),
        (want, got) => panic!("{ctx}: wanted {want:?}, got {got:?}"),
    }
}

fn cases() -> Vec<Case> {
    let plain_req = req(&[]);
    let sw: &[u8] = b"hostile";
    let mut t = vec![
        // Not STUN at all.
        case(
            "empty",
            vec![],
            malformed(WireError::Truncated { have: 0, need: 20 }),
        ),
        case(
            "19 bytes",
            plain_req[..19].to_vec(),
            malformed(WireError::Truncated { have: 19, need: 20 }),
        ),
        case("RTP-like", vec![0x80; 40], malformed(WireError::NotStun)),
        case(
            "ChannelData-like",
            [&[0x40, 0x00, 0x00, 0x14][..], &[7; 20]].concat(),
            malformed(WireError::NotStun),
        ),
        case(
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: turnd\r\n\r\n".to_vec(),
            malformed(WireError::NotStun),
        ),
        case(
            "TLS ClientHello prefix",
            [&[0x16, 0x03, 0x01, 0x00, 0x10][..], &[0; 27]].concat(),
            malformed(WireError::BadCookie),
        ),
        case(
            "RFC 3489 request (no magic cookie)",
            [&[0x00, 0x01, 0x00, 0x00][..], &[0x11; 16]].concat(),
            malformed(WireError::BadCookie),
        ),
        // Length field lies.
        case(
            "length says 4 more",
            with_len(req(&[(attr::SOFTWARE, sw)]), 16),
            malformed(WireError::Truncated { have: 32, need: 36 }),
        ),
        case(
            "length says 4 less",
            with_len(req(&[(attr::SOFTWARE, sw)]), 8),
            malformed(WireError::TrailingBytes { extra: 4 }),
        ),
        case(
            "length 0 with a body",
            with_len(req(&[(attr::SOFTWARE, sw)]), 0),
            malformed(WireError::TrailingBytes { extra: 12 }),
        ),
        case(
            "length 0xFFFC, header only",
            with_len(req(&[]), 0xFFFC),
            malformed(WireError::Truncated {
                have: 20,
                need: 20 + 0xFFFC,
            }),
        ),
        case(
            "length 0xFFFF",
            with_len(req(&[]), 0xFFFF),
            malformed(WireError::Unaligned(0xFFFF)),
        ),
        case(
            "one trailing byte",
            [req(&[]), vec![0]].concat(),
            malformed(WireError::TrailingBytes { extra: 1 }),
        ),
        // Attribute lengths overrunning the message.
        case(
            "attribute one byte too long",
            {
                let mut v = req(&[(attr::SOFTWARE, b"abcd")]);
                v[23] = 5;
                v
            },
            malformed(WireError::AttributeOverrun {
                attr_type: attr::SOFTWARE,
            }),
        ),
        case(
            "attribute length 0xFFFF",
            {
                let mut v = req(&[(attr::PADDING, &[0; 40])]);
                v[22..24].copy_from_slice(&[0xFF, 0xFF]);
                v
            },
            malformed(WireError::AttributeOverrun {
                attr_type: attr::PADDING,
            }),
        ),
        case(
            "second attribute overruns",
            {
                let mut v = req(&[(attr::SOFTWARE, b"ok"), (0x7ABC, &[0; 8])]);
                v[30..32].copy_from_slice(&100u16.to_be_bytes());
                v
            },
            malformed(WireError::AttributeOverrun { attr_type: 0x7ABC }),
        ),
        case(
            "64 KiB of 0xFF attribute lengths",
            {
                let mut v = req(&[]);
                v.resize(20 + 0xFFFC, 0xFF);
                v[20..22].copy_from_slice(&attr::SOFTWARE.to_be_bytes());
                set_len(v)
            },
            malformed(WireError::AttributeOverrun {
                attr_type: attr::SOFTWARE,
            }),
        ),
        // Attribute counts.
        case(
            "MAX_ATTRIBUTES empty optional attributes",
            many(attr::SOFTWARE, MAX_ATTRIBUTES),
            OK,
        ),
        case(
            "one attribute too many",
            many(attr::SOFTWARE, MAX_ATTRIBUTES + 1),
            malformed(WireError::TooManyAttributes),
        ),
        case(
            "16k empty attributes in 64 KiB",
            many(attr::SOFTWARE, 0xFFFC / 4),
            malformed(WireError::TooManyAttributes),
        ),
        case(
            "16k empty unknown comprehension-required attributes",
            many(0x7ABC, 0xFFFC / 4),
            malformed(WireError::TooManyAttributes),
        ),
        case(
            "MAX_ATTRIBUTES copies of one unknown attribute",
            many(0x7ABC, MAX_ATTRIBUTES),
            Want::Error(420, &[0x7ABC]),
        ),
        case(
            "20 distinct unknown attributes: 8 listed",
            {
                let values: Vec<(u16, &[u8])> = (0..20).map(|i| (0x7F00 + i, &[][..])).collect();
                req(&values)
            },
            Want::Error(
                420,
                &[
                    0x7F00, 0x7F01, 0x7F02, 0x7F03, 0x7F04, 0x7F05, 0x7F06, 0x7F07,
                ],
            ),
        ),
        // Unknown attributes (RFC 8489 §6.3.1.1).
        case(
            "unknown comprehension-required",
            req(&[(0x7ABC, b"x")]),
            Want::Error(420, &[0x7ABC]),
        ),
        case(
            "unknown comprehension-optional",
            req(&[(0xC0DE, b"ignored")]),
            OK,
        ),
        case(
            "unknown beats CHANGE-REQUEST",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 6]), (0x0FFF, b"")]),
            Want::Error(420, &[0x0FFF]),
        ),
        // Address attributes with bad families in a request: understood, not acted on.
        case(
            "MAPPED-ADDRESS family 3",
            req(&[(attr::MAPPED_ADDRESS, &[0, 3, 0, 1, 1, 2, 3, 4])]),
            OK,
        ),
        case(
            "XOR-MAPPED-ADDRESS family 0",
            req(&[(attr::XOR_MAPPED_ADDRESS, &[0, 0, 0, 1, 1, 2, 3, 4])]),
            OK,
        ),
        case(
            "XOR-MAPPED-ADDRESS IPv6 family, IPv4 length",
            req(&[(attr::XOR_MAPPED_ADDRESS, &[0, 2, 0, 1, 1, 2, 3, 4])]),
            OK,
        ),
        case(
            "empty MAPPED-ADDRESS",
            req(&[(attr::MAPPED_ADDRESS, b"")]),
            OK,
        ),
        // FINGERPRINT (RFC 8489 §7.3, §14.7).
        case(
            "valid FINGERPRINT",
            fingerprinted(&[(attr::SOFTWARE, sw)]),
            OK,
        ),
        case(
            "wrong FINGERPRINT",
            {
                let mut v = fingerprinted(&[(attr::SOFTWARE, sw)]);
                let last = v.len() - 1;
                v[last] ^= 0x80;
                v
            },
            Want::Dropped(Drop::BadFingerprint),
        ),
        case(
            "FINGERPRINT not last",
            req(&[(attr::FINGERPRINT, &[0; 4]), (attr::SOFTWARE, sw)]),
            malformed(WireError::BadFingerprint),
        ),
        case(
            "two FINGERPRINTs",
            {
                let v = fingerprinted(&[]);
                let fp = v[20..].to_vec();
                set_len([v, fp].concat())
            },
            malformed(WireError::BadFingerprint),
        ),
        case(
            "empty FINGERPRINT",
            req(&[(attr::FINGERPRINT, b"")]),
            Want::Dropped(Drop::BadFingerprint),
        ),
        case(
            "8-byte FINGERPRINT",
            req(&[(attr::FINGERPRINT, &[0; 8])]),
            Want::Dropped(Drop::BadFingerprint),
        ),
        // Non-Binding methods, indications, responses.
        case(
            "Binding indication",
            raw(message_type(BINDING, Class::Indication), &[]),
            Want::Dropped(Drop::NotRequest),
        ),
        case(
            "Send indication",
            raw(
                message_type(0x006, Class::Indication),
                &[(attr::DATA, b"payload")],
            ),
            Want::Dropped(Drop::NotRequest),
        ),
        case(
            "Binding success response",
            raw(
                message_type(BINDING, Class::Success),
                &[(attr::XOR_MAPPED_ADDRESS, &[0, 9, 0, 0])],
            ),
            Want::Dropped(Drop::NotRequest),
        ),
        case(
            "Binding error response",
            raw(message_type(BINDING, Class::Error), &[]),
            Want::Dropped(Drop::NotRequest),
        ),
        case(
            "Allocate error response",
            raw(message_type(0x003, Class::Error), &[]),
            Want::Dropped(Drop::NotRequest),
        ),
        // PADDING (RFC 5780 §7.6): echoed, capped by max_padding (1200 by default).
        case("PADDING 0", req(&[(attr::PADDING, b"")]), padded(0)),
        case("PADDING 1", req(&[(attr::PADDING, &[0; 1])]), padded(1)),
        case("PADDING 3", req(&[(attr::PADDING, &[0; 3])]), padded(3)),
        case("PADDING 5", req(&[(attr::PADDING, &[0; 5])]), padded(5)),
        case(
            "PADDING 1001",
            req(&[(attr::PADDING, &[0; 1001])]),
            padded(1001),
        ),
        case(
            "PADDING 1500 (capped)",
            req(&[(attr::PADDING, &[0; 1500])]),
            padded(1200),
        ),
        case(
            "PADDING 65000 (capped)",
            req(&[(attr::PADDING, &[0xAA; 65_000])]),
            padded(1200),
        ),
        case(
            "two PADDINGs: the first counts",
            req(&[(attr::PADDING, &[0; 7]), (attr::PADDING, &[0; 900])]),
            padded(7),
        ),
        case(
            "PADDING with FINGERPRINT",
            fingerprinted(&[(attr::PADDING, &[0; 33])]),
            padded(33),
        ),
        // CHANGE-REQUEST (RFC 5780 §7.2).
        case(
            "CHANGE-REQUEST without flags",
            req(&[(attr::CHANGE_REQUEST, &[0; 4])]),
            OK,
        ),
        case(
            "CHANGE-REQUEST change IP",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 4])]),
            OK,
        ),
        case(
            "CHANGE-REQUEST change port",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 2])]),
            OK,
        ),
        case(
            "CHANGE-REQUEST change both",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 6])]),
            OK,
        ),
        case(
            "CHANGE-REQUEST reserved bits only",
            req(&[(attr::CHANGE_REQUEST, &[0xFF, 0xFF, 0xFF, 0xF9])]),
            OK,
        ),
        case(
            "two CHANGE-REQUESTs: the first counts",
            req(&[
                (attr::CHANGE_REQUEST, &[0, 0, 0, 0]),
                (attr::CHANGE_REQUEST, &[0, 0, 0, 6]),
            ]),
            OK,
        ),
        case(
            "CHANGE-REQUEST over TCP without flags",
            req(&[(attr::CHANGE_REQUEST, &[0; 4])]),
            OK,
        )
        .tcp(),
        case(
            "CHANGE-REQUEST over TCP",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 2])]),
            Want::Error(400, &[]),
        )
        .tcp(),
        case(
            "CHANGE-REQUEST on a plain server",
            req(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 4])]),
            Want::Error(420, &[attr::CHANGE_REQUEST]),
        )
        .plain(),
        case(
            "CHANGE-REQUEST without flags on a plain server",
            req(&[(attr::CHANGE_REQUEST, &[0; 4])]),
            OK,
        )
        .plain(),
        // RESPONSE-PORT (RFC 5780 §7.5).
        case(
            "RESPONSE-PORT",
            req(&[(attr::RESPONSE_PORT, &[0x13, 0x88, 0, 0])]),
            Want::Success {
                padding: None,
                to_port: Some(5000),
            },
        ),
        case(
            "RESPONSE-PORT with CHANGE-REQUEST",
            req(&[
                (attr::CHANGE_REQUEST, &[0, 0, 0, 6]),
                (attr::RESPONSE_PORT, &[0x13, 0x88, 0, 0]),
            ]),
            Want::Success {
                padding: None,
                to_port: Some(5000),
            },
        ),
        case(
            "RESPONSE-PORT 0",
            req(&[(attr::RESPONSE_PORT, &[0, 0, 0, 0])]),
            Want::Error(400, &[]),
        ),
        case(
            "RESPONSE-PORT with PADDING",
            req(&[
                (attr::RESPONSE_PORT, &[0x13, 0x88, 0, 0]),
                (attr::PADDING, &[0; 8]),
            ]),
            Want::Error(400, &[]),
        ),
        case(
            "RESPONSE-PORT over TCP",
            req(&[(attr::RESPONSE_PORT, &[0x13, 0x88, 0, 0])]),
            Want::Error(400, &[]),
        )
        .tcp(),
    ];
    for n in [0usize, 1, 2, 3, 5, 8] {
        let value = vec![0x06; n];
        t.push(case(
            &format!("CHANGE-REQUEST of {n} bytes"),
            req(&[(attr::CHANGE_REQUEST, &value)]),
            Want::Error(400, &[]),
        ));
        t.push(
            case(
                &format!("CHANGE-REQUEST of {n} bytes, plain server"),
                req(&[(attr::CHANGE_REQUEST, &value)]),
                Want::Error(400, &[]),
            )
            .plain(),
        );
    }
    // RFC 5780 §7.5: a 16-bit port and 16 bits of padding, exactly 4 bytes.
    for n in [0usize, 1, 2, 3, 5, 8] {
        t.push(case(
            &format!("RESPONSE-PORT of {n} bytes"),
            req(&[(attr::RESPONSE_PORT, &vec![0x13; n])]),
            Want::Error(400, &[]),
        ));
    }
    for n in [1u16, 2, 3, 5, 6, 7, 0xFFFD] {
        let mut v = req(&[]);
        v.resize(20 + usize::from(n), 0);
        t.push(case(
            &format!("unaligned length {n}"),
            with_len(v, n),
            malformed(WireError::Unaligned(n)),
        ));
    }
    // Every method but Binding gets 400, over both transports and on both servers.
    for method in [0x000, 0x002, 0x003, 0x004, 0x008, 0x009, 0x00A, 0xFFF] {
        let packet = raw(message_type(method, Class::Request), &[]);
        t.push(case(
            &format!("method {method:#05x}"),
            packet.clone(),
            Want::Error(400, &[]),
        ));
        t.push(
            case(
                &format!("method {method:#05x}, plain"),
                packet.clone(),
                Want::Error(400, &[]),
            )
            .plain(),
        );
        t.push(
            case(
                &format!("method {method:#05x}, TCP"),
                packet,
                Want::Error(400, &[]),
            )
            .tcp(),
        );
    }
    t
}

#[test]
fn table_of_hostile_packets() {
    let cases = cases();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for c in &cases {
        for family in [Family::V4, Family::V6] {
            let listeners: &[Listener] = match c.server {
                Server::Rfc5780 => &Listener::ALL,
                Server::Plain => &[Listener::PRIMARY],
            };
            for &local in listeners {
                run_case(c, family, local);
            }
        }
    }
}

/// Valid requests of every shape the responder acts on.
fn valid_requests() -> Vec<Vec<u8>> {
    let enc = |r: BindingRequest| r.encode(&ID).unwrap();
    vec![
        enc(BindingRequest::default()),
        enc(BindingRequest {
            change_ip: true,
            change_port: true,
            ..Default::default()
        }),
        enc(BindingRequest {
            response_port: Some(5000),
            software: Some("natscope hostile".into()),
            ..Default::default()
        }),
        enc(BindingRequest {
            padding: Some(37),
            fingerprint: true,
            ..Default::default()
        }),
        enc(BindingRequest {
            change_port: true,
            software: Some("x".into()),
            fingerprint: true,
            ..Default::default()
        }),
        req(&[(0x7ABC, b"unknown"), (0xC0DE, b"optional")]),
        raw(
            message_type(0x003, Class::Request),
            &[(attr::LIFETIME, &[0, 0, 2, 0])],
        ),
    ]
}

#[test]
fn truncated_at_every_length() {
    let r = responder(Server::Rfc5780, Family::V4, 3);
    let src = client(Family::V4);
    let mut truncations = 0;
    for full in valid_requests() {
        let (verdict, _) = handle(&r, Transport::Udp, Listener::PRIMARY, src, &full);
        assert!(verdict.is_ok(), "the untruncated request is answered");
        for len in 0..full.len() {
            let need = if len < HEADER_LEN {
                HEADER_LEN
            } else {
                full.len()
            };
            let (verdict, _) = handle(&r, Transport::Udp, Listener::PRIMARY, src, &full[..len]);
            assert_eq!(
                verdict,
                Err(Drop::Malformed(WireError::Truncated { have: len, need })),
                "{full:02x?} cut at {len}"
            );
            truncations += 1;
        }
        // Cut on a 4-byte boundary with the length field patched to match: the cut either
        // falls between attributes (a shorter valid message) or inside one (overrun).
        for len in (HEADER_LEN..full.len()).step_by(4) {
            let cut = set_len(full[..len].to_vec());
            let boundary = Message::parse(&full)
                .unwrap()
                .attributes()
                .any(|a| a.offset == len);
            let (verdict, _) = handle(&r, Transport::Udp, Listener::PRIMARY, src, &cut);
            match verdict {
                Ok(_) => assert!(boundary, "{full:02x?} cut at {len}"),
                Err(Drop::Malformed(WireError::AttributeOverrun { .. })) => {
                    assert!(!boundary, "{full:02x?} cut at {len}")
                }
                other => panic!("{full:02x?} cut at {len}: {other:?}"),
            }
        }
    }
    assert!(truncations > 250, "{truncations}");
}

#[test]
fn tight_buffers_and_amplification_bounds_hold() {
    // Every valid request, every amplification bound, every output size from 0 to 600.
    let src4 = client(Family::V4);
    let src6 = client(Family::V6);
    let mut answered = 0;
    let mut too_small = 0;
    for amplification in 1..=4 {
        for (family, src) in [(Family::V4, src4), (Family::V6, src6)] {
            let r = responder(Server::Rfc5780, family, amplification);
            for p in valid_requests() {
                for out_len in (0..600).step_by(7) {
                    match handle_with(&r, Transport::Udp, Listener::PRIMARY, src, &p, out_len).0 {
                        Ok(_) => answered += 1,
                        Err(Drop::TooSmall | Drop::NoRoom) => too_small += 1,
                        Err(other) => panic!("{p:02x?} into {out_len} bytes: {other:?}"),
                    }
                }
            }
        }
    }
    assert!(
        answered > 1000 && too_small > 100,
        "{answered} / {too_small}"
    );
    // A bare 20-byte request with amplification 1 cannot be answered at all (a response
    // needs at least XOR-MAPPED-ADDRESS and RESPONSE-ORIGIN): dropped, never overshoot.
    let r = responder(Server::Rfc5780, Family::V4, 1);
    assert_eq!(
        handle(&r, Transport::Udp, Listener::PRIMARY, src4, &req(&[])).0,
        Err(Drop::TooSmall)
    );
    // Padding the request buys room: PADDING is echoed only as far as the bound allows.
    let p = req(&[(attr::PADDING, &[0; 200])]);
    let (verdict, bytes) = handle(&r, Transport::Udp, Listener::PRIMARY, src4, &p);
    let reply = verdict.unwrap();
    assert!(reply.len <= p.len());
    let echoed = BindingResponse::parse(&bytes).unwrap().padding.unwrap();
    assert!(echoed < 200, "{echoed}");
}

#[test]
fn responses_with_bad_address_families_are_refused_by_the_client_parser() {
    for value in [
        &[0, 3, 0, 1, 1, 2, 3, 4][..],
        &[0, 1, 0, 1, 1, 2, 3][..],
        &[0, 2, 0, 1, 1, 2, 3, 4][..],
        &[][..],
    ] {
        for t in [
            attr::XOR_MAPPED_ADDRESS,
            attr::MAPPED_ADDRESS,
            attr::OTHER_ADDRESS,
            attr::RESPONSE_ORIGIN,
        ] {
            let m = raw(message_type(BINDING, Class::Success), &[(t, value)]);
            assert_eq!(
                BindingResponse::parse(&m),
                Err(WireError::BadAddress { attr_type: t })
            );
            // And the server never answers a response.
            let r = responder(Server::Rfc5780, Family::V4, 3);
            let verdict = handle(
                &r,
                Transport::Udp,
                Listener::PRIMARY,
                client(Family::V4),
                &m,
            )
            .0;
            assert_eq!(verdict, Err(Drop::NotRequest));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded random bytes and mutations.

#[derive(Debug)]
struct Fleet {
    /// Every (server, family) pair with amplification bounds 1 to 4.
    responders: Vec<(Server, Family, Responder)>,
}

impl Fleet {
    fn new() -> Self {
        let mut responders = vec![];
        for server in [Server::Rfc5780, Server::Plain] {
            for family in [Family::V4, Family::V6] {
                for amplification in 1..=4 {
                    responders.push((server, family, responder(server, family, amplification)));
                }
            }
        }
        Fleet { responders }
    }

    /// Run `packet` through a random responder, transport, listener and buffer size.
    fn run(&self, rng: &mut SmallRng, packet: &[u8]) -> Result<Reply, Drop> {
        let (server, family, r) = &self.responders[rng.random_range(0..self.responders.len())];
        let local = match server {
            Server::Rfc5780 => Listener::ALL[rng.random_range(0..4)],
            Server::Plain => Listener::PRIMARY,
        };
        let transport = if rng.random_bool(0.2) {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let mut src = client(*family);
        src.set_port(rng.random());
        let out_len = if rng.random_bool(0.8) {
            2048
        } else {
            rng.random_range(0..2048)
        };
        handle_with(r, transport, local, src, packet, out_len).0
    }
}

fn mutate(rng: &mut SmallRng, v: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..10) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = [0, 0xFF, 0x7F, 0x80, 4, rng.random()][rng.random_range(0..6)];
            }
            2 if !v.is_empty() => {
                let n = rng.random_range(0..v.len());
                v.truncate(n);
            }
            3 => {
                let n = rng.random_range(1..16);
                v.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 if v.len() >= 24 => {
                // Attribute length field at a random aligned offset.
                let i = 20 + rng.random_range(0..(v.len() - 20) / 4) * 4 + 2;
                if i + 2 <= v.len() {
                    let l: u16 = [0, 1, 3, 4, 0xFFFF, rng.random()][rng.random_range(0..6)];
                    v[i..i + 2].copy_from_slice(&l.to_be_bytes());
                }
            }
            5 if v.len() >= 4 => {
                let l: u16 = [0, 4, 0xFFFC, 0xFFFF, rng.random()][rng.random_range(0..5)];
                v[2..4].copy_from_slice(&l.to_be_bytes());
            }
            6 => {
                // Append an attribute of an interesting type, then fix the length field.
                let types = [
                    attr::CHANGE_REQUEST,
                    attr::RESPONSE_PORT,
                    attr::PADDING,
                    attr::FINGERPRINT,
                    attr::XOR_MAPPED_ADDRESS,
                    attr::MESSAGE_INTEGRITY,
                    attr::SOFTWARE,
                    0x7ABC,
                    rng.random(),
                ];
                let t = types[rng.random_range(0..types.len())];
                let len = [0, 1, 2, 4, 8, rng.random_range(0..300)][rng.random_range(0..6)];
                v.extend_from_slice(&t.to_be_bytes());
                v.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
                v.extend((0..len).map(|_| rng.random::<u8>()));
                v.resize(v.len().next_multiple_of(4), 0);
                *v = set_len(std::mem::take(v));
            }
            7 if v.len() > 24 => {
                // Duplicate a chunk.
                let a = rng.random_range(20..v.len());
                let b = rng.random_range(a..=v.len().min(a + 64));
                let chunk = v[a..b].to_vec();
                v.extend_from_slice(&chunk);
            }
            8 => *v = set_len(std::mem::take(v)),
            _ if v.len() >= 2 => {
                // Message type: any method, any class.
                let t: u16 = rng.random::<u16>() & 0x3FFF;
                v[0..2].copy_from_slice(&t.to_be_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn seeded_random_bytes_and_mutations() {
    const ITERATIONS: usize = 200_000;
    let mut rng = SmallRng::seed_from_u64(0x5EED_7075_726E_0001);
    let fleet = Fleet::new();
    let corpus: Vec<Vec<u8>> = valid_requests()
        .into_iter()
        .chain(
            cases()
                .into_iter()
                .map(|c| c.packet)
                .filter(|p| p.len() < 2048),
        )
        .collect();
    let (mut answered, mut dropped) = (0usize, 0usize);
    let mut buf = Vec::with_capacity(4096);
    for i in 0..ITERATIONS {
        buf.clear();
        match i % 4 {
            0 => {
                // Pure noise: never a STUN request, always dropped.
                let n = rng.random_range(0..120);
                buf.extend((0..n).map(|_| rng.random::<u8>()));
                let verdict = fleet.run(&mut rng, &buf);
                assert!(
                    matches!(verdict, Err(Drop::Malformed(_))),
                    "noise {buf:02x?} gave {verdict:?}"
                );
            }
            1 => {
                // A valid header with a random body.
                buf.extend_from_slice(&req(&[]));
                if rng.random_bool(0.5) {
                    let t = rng.random::<u16>() & 0x3FFF;
                    buf[0..2].copy_from_slice(&t.to_be_bytes());
                }
                let n = rng.random_range(0..30) * 4;
                buf.extend((0..n).map(|_| rng.random::<u8>()));
                buf = set_len(std::mem::take(&mut buf));
            }
            _ => {
                buf.extend_from_slice(&corpus[rng.random_range(0..corpus.len())]);
                mutate(&mut rng, &mut buf);
            }
        }
        if i % 4 != 0 {
            match fleet.run(&mut rng, &buf) {
                Ok(_) => answered += 1,
                Err(_) => dropped += 1,
            }
        }
    }
    // The mix must exercise both outcomes heavily, or the loop tests nothing.
    assert!(answered > 10_000, "answered {answered}");
    assert!(dropped > 10_000, "dropped {dropped}");
}

// ---------------------------------------------------------------------------------------------
// Real sockets.

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn start(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut cfg = ServerConfig::new(ResponderConfig::new("127.0.0.1:0".parse().unwrap(), None));
    cfg.workers = 1;
    cfg.rate_limit = 0;
    configure(&mut cfg);
    turn::server::spawn(cfg).unwrap()
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    received: u64,
    answered: u64,
    errors: u64,
    dropped: u64,
    rate_limited: u64,
}

fn counts(s: &Stats) -> Counts {
    Counts {
        received: s.received.load(Ordering::SeqCst),
        answered: s.answered.load(Ordering::SeqCst),
        errors: s.errors.load(Ordering::SeqCst),
        dropped: s.dropped.load(Ordering::SeqCst),
        rate_limited: s.rate_limited.load(Ordering::SeqCst),
    }
}

/// Wait until the counters satisfy `done` (drivers may publish them in batches, one counter
/// at a time), failing with the last snapshot after `IO_TIMEOUT`.
fn settle(stats: &Stats, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let c = counts(stats);
        if done(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn binding(id: [u8; 12]) -> Vec<u8> {
    BindingRequest::default().encode(&id).unwrap()
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Receive one datagram: (bytes, sender).
fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    (buf[..n].to_vec(), from)
}

fn tcp_client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read exactly one STUN frame.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    s.read_exact(&mut v).unwrap();
    let len = wire::frame_len(&v).unwrap();
    v.resize(len, 0);
    s.read_exact(&mut v[4..]).unwrap();
    v
}

/// The server closed the connection (EOF or reset) without sending anything.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        Ok(n) => panic!("{what}: server sent {:02x?} instead of closing", &buf[..n]),
        Err(e) => panic!("{what}: connection not closed: {e}"),
    }
}

fn check_success(bytes: &[u8], id: [u8; 12], me: SocketAddr, server: SocketAddr) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m.transaction_id(), id);
    let resp = BindingResponse::parse(bytes).unwrap();
    assert!(resp.success, "{resp:?}");
    assert_eq!(resp.xor_mapped, Some(me));
    assert_eq!(resp.response_origin, Some(server));
}

#[test]
fn real_sockets_survive_hostile_udp_and_tcp() {
    let server = start(|c| c.tcp_idle_timeout = Duration::from_secs(1));
    let addr = server.primary();
    let stats = server.stats();

    // --- UDP: garbage gets nothing; the next request is the first thing answered.
    let udp = udp_client();
    let me = udp.local_addr().unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xFF; 100],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        with_len(req(&[]), 8),
        // 3000 bytes claiming to be one message: the driver reads 2048 and drops it.
        set_len([req(&[]), vec![0; 2980]].concat()),
        many(attr::SOFTWARE, 1000),
        raw(message_type(BINDING, Class::Indication), &[]),
        raw(message_type(BINDING, Class::Success), &[]),
        {
            let mut v = fingerprinted(&[]);
            v[25] ^= 1;
            v
        },
    ];
    for g in &garbage {
        udp.send_to(g, addr).unwrap();
    }
    let id = [1; 12];
    udp.send_to(&binding(id), addr).unwrap();
    let (bytes, from) = recv(&udp);
    assert_eq!(from, addr);
    check_success(&bytes, id, me, addr);
    let n = garbage.len() as u64;
    settle(stats, "every garbage datagram dropped, one answer", |c| {
        c.received == n + 1 && c.dropped == n && c.answered == 1 && c.errors == 0
    });

    // A non-Binding request gets 400; RESPONSE-PORT sends the answer to another socket.
    udp.send_to(&raw(message_type(0x003, Class::Request), &[]), addr)
        .unwrap();
    let (bytes, _) = recv(&udp);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.method(), m.class()), (0x003, Class::Error));
    assert_eq!(error_code(&m).map(|e| e.0), Some(400));
    let other = udp_client();
    let other_port = other.local_addr().unwrap().port();
    let rp = BindingRequest {
        response_port: Some(other_port),
        ..Default::default()
    }
    .encode(&[2; 12])
    .unwrap();
    udp.send_to(&rp, addr).unwrap();
    let (bytes, _) = recv(&other);
    check_success(&bytes, [2; 12], me, addr);

    // --- TCP: garbage closes the connection.
    let dropped_before = stats.dropped.load(Ordering::SeqCst);
    for (what, bytes) in [
        ("garbage", vec![0xFF; 64]),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: turnd\r\n\r\n".to_vec()),
        ("bad cookie", vec![0; 20]),
        (
            "indication",
            raw(message_type(BINDING, Class::Indication), &[]),
        ),
        // A STUN header announcing 8000 bytes: refused before the body arrives.
        ("oversized frame", with_len(req(&[]), 8000)),
    ] {
        let mut s = tcp_client(addr);
        s.write_all(&bytes).unwrap();
        assert_closed(&mut s, what);
    }
    // Those that parsed as frames were counted as drops.
    settle(stats, "TCP drops", |c| c.dropped >= dropped_before + 2);

    // A slowloris: half a header, then silence. It must not block anyone else.
    let mut slow = tcp_client(addr);
    slow.write_all(&binding([3; 12])[..10]).unwrap();
    let slow_since = Instant::now();

    // A frame split across writes.
    let mut s = tcp_client(addr);
    let me_tcp = s.local_addr().unwrap();
    let frame = fingerprinted(&[(attr::SOFTWARE, b"split")]);
    let tid: [u8; 12] = frame[8..20].try_into().unwrap();
    for chunk in [&frame[..3], &frame[3..21], &frame[21..]] {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    check_success(&read_frame(&mut s), tid, me_tcp, addr);

    // Two frames in one write, then an error reply that keeps the connection open.
    let both = [binding([4; 12]), binding([5; 12])].concat();
    s.write_all(&both).unwrap();
    check_success(&read_frame(&mut s), [4; 12], me_tcp, addr);
    check_success(&read_frame(&mut s), [5; 12], me_tcp, addr);
    let response_port = BindingRequest {
        response_port: Some(9),
        ..Default::default()
    }
    .encode(&[6; 12])
    .unwrap();
    s.write_all(&response_port).unwrap();
    let err = BindingResponse::parse(&read_frame(&mut s)).unwrap();
    assert_eq!(
        err.error.map(|e| e.0),
        Some(400),
        "RESPONSE-PORT is UDP-only"
    );
    let change = BindingRequest {
        change_port: true,
        ..Default::default()
    }
    .encode(&[6; 12])
    .unwrap();
    s.write_all(&change).unwrap();
    let err = BindingResponse::parse(&read_frame(&mut s)).unwrap();
    assert_eq!(
        err.error.map(|e| e.0),
        Some(420),
        "plain server: no CHANGE-REQUEST"
    );
    assert_eq!(err.unknown_attributes, [attr::CHANGE_REQUEST]);
    s.write_all(&binding([7; 12])).unwrap();
    check_success(&read_frame(&mut s), [7; 12], me_tcp, addr);

    // A valid frame followed by garbage: answered, then closed.
    s.write_all(&[binding([8; 12]), vec![0xEE; 24]].concat())
        .unwrap();
    check_success(&read_frame(&mut s), [8; 12], me_tcp, addr);
    assert_closed(&mut s, "garbage after a valid frame");

    // The slowloris is cut off by the idle timeout (1 s here), not before.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_closed(&mut slow, "slowloris");
    let waited = slow_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "slowloris closed after {waited:?}, before the idle timeout"
    );

    // After all that, both transports still answer normally.
    let id = [9; 12];
    udp.send_to(&binding(id), addr).unwrap();
    let (bytes, _) = recv(&udp);
    check_success(&bytes, id, me, addr);
    let mut s = tcp_client(addr);
    let me_tcp = s.local_addr().unwrap();
    s.write_all(&binding([10; 12])).unwrap();
    check_success(&read_frame(&mut s), [10; 12], me_tcp, addr);
    server.shutdown();
}

#[test]
fn rate_limit_answers_about_the_burst() {
    let flags = turn::config::Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        rate_limit: Some(10),
        rate_burst: Some(10),
        workers: Some(1),
        no_tcp: true,
        ..Default::default()
    };
    let (cfg, _) = turn::config::merge(&flags, turn::config::FileConfig::default()).unwrap();
    assert_eq!((cfg.rate_limit, cfg.rate_burst), (10, 10));
    let server = turn::server::spawn(cfg).unwrap();
    let addr = server.primary();
    let udp = udp_client();

    const SENT: u64 = 100;
    let requests: Vec<Vec<u8>> = (0..SENT)
        .map(|i| {
            let mut id = [0u8; 12];
            id[..8].copy_from_slice(&i.to_be_bytes());
            binding(id)
        })
        .collect();
    let start = Instant::now();
    for r in &requests {
        udp.send_to(r, addr).unwrap();
    }
    let sent_in = start.elapsed();
    // Wait until every request was either answered (counted after the send) or limited.
    let stats = server.stats();
    settle(stats, "every request answered or limited", |c| {
        c.received == SENT && c.answered + c.rate_limited == SENT
    });
    let processed_in = start.elapsed();
    // Every answer is in our socket buffer by now: collect them without waiting for more.
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answers = 0u64;
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = udp.recv_from(&mut buf) {
        assert!(BindingResponse::parse(&buf[..n]).unwrap().success);
        answers += 1;
    }
    // The burst (10) plus what 10/s refills while the server works through the flood: at most
    // 12 on any machine that processes 100 datagrams within 100 ms. Should the machine stall
    // longer, the refill it earned is allowed for, and no more.
    let refill = (processed_in.as_secs_f64() * 10.0).ceil() as u64;
    let most = 12.max(10 + refill + 1);
    assert!(
        (8..=most).contains(&answers),
        "{answers} answers to {SENT} requests with --rate-limit 10 --rate-burst 10, \
         wanted 8..={most} (sent in {sent_in:?}, processed in {processed_in:?})"
    );
    let c = counts(stats);
    assert_eq!(c.answered, answers, "{c:?}");
    assert_eq!(
        c.rate_limited,
        SENT - answers,
        "rate_limited counts the rest: {c:?}"
    );
    server.shutdown();
}

/// A slowloris that keeps the idle timer happy (one byte every 200 ms) must still be cut off
/// when its frame is not complete within the frame deadline.
#[test]
fn trickled_frame_is_cut_off_at_the_frame_deadline() {
    let server = start(|c| {
        c.udp = false;
        c.tcp_idle_timeout = Duration::from_secs(30);
        c.tcp_frame_timeout = Duration::from_secs(1);
    });
    let addr = server.primary();
    let frame = fingerprinted(&[(attr::SOFTWARE, b"a frame long enough to trickle slowly")]);
    let mut slow = tcp_client(addr);
    slow.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for b in &frame[..frame.len() - 1] {
        if slow.write_all(std::slice::from_ref(b)).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut one = [0u8; 1];
        match slow.read(&mut one) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                closed_after = Some(started.elapsed());
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed_after = closed_after.expect("the trickling connection was never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(10),
        "closed by something else than the frame deadline: {closed_after:?}"
    );
    // A well-behaved client is still served.
    let mut ok = tcp_client(addr);
    ok.write_all(&frame).unwrap();
    let answer = read_frame(&mut ok);
    assert!(BindingResponse::parse(&answer).unwrap().success);
}

/// TURN on (users configured), so TCP connections run the TURN stream driver.
fn turn_on(c: &mut ServerConfig, relay_ports: std::ops::RangeInclusive<u16>) {
    let mut t = turn::server::TurnConfig::new();
    t.users = vec![("alice".into(), "pw".into())];
    t.relay_ip = Some("127.0.0.1".parse().unwrap());
    t.ports = relay_ports;
    c.turn = Some(t);
}

/// Write `bytes` one at a time, `gap` apart, until the server closes: when it closed.
fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let started = Instant::now();
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            return Some(started.elapsed());
        }
        let mut one = [0u8; 1];
        match s.read(&mut one) {
            Ok(0) => return Some(started.elapsed()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(started.elapsed()),
            _ => {}
        }
        std::thread::sleep(gap);
    }
    None
}

/// The TURN stream driver keeps the Binding path's frame deadline: a trickled frame is cut
/// off although each byte arrives well within the idle timeout.
#[test]
fn turn_tcp_trickled_frame_is_cut_off_at_the_frame_deadline() {
    let server = start(|c| {
        c.udp = false;
        c.tcp_idle_timeout = Duration::from_secs(30);
        c.tcp_frame_timeout = Duration::from_secs(1);
        turn_on(c, 23100..=23119);
    });
    let addr = server.primary();
    // An Allocate-sized frame: what a TURN client sends first.
    let frame = fingerprinted(&[(attr::SOFTWARE, b"a frame long enough to trickle slowly")]);
    let mut slow = tcp_client(addr);
    let closed_after = trickle(
        &mut slow,
        &frame[..frame.len() - 1],
        Duration::from_millis(200),
    )
    .expect("the trickling TURN connection was never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(10),
        "closed by something else than the frame deadline: {closed_after:?}"
    );
    // A well-behaved client is still served, Binding and TURN alike.
    let mut ok = tcp_client(addr);
    ok.write_all(&frame).unwrap();
    assert!(
        BindingResponse::parse(&read_frame(&mut ok))
            .unwrap()
            .success
    );
    let allocate = raw(message_type(0x003, Class::Request), &[]);
    ok.write_all(&allocate).unwrap();
    let m = read_frame(&mut ok);
    assert_eq!(error_code(&Message::parse(&m).unwrap()).unwrap().0, 401);
    server.shutdown();
}

/// Single bytes do not count as activity: a connection that never completes a frame is gone
/// at the idle timeout even with the frame deadline far away... and complete frames do count.
#[test]
fn turn_tcp_idle_clock_is_not_reset_by_partial_bytes() {
    let server = start(|c| {
        c.udp = false;
        c.tcp_idle_timeout = Duration::from_secs(1);
        c.tcp_frame_timeout = Duration::from_secs(30);
        turn_on(c, 23120..=23139);
    });
    let addr = server.primary();
    let frame = fingerprinted(&[(attr::SOFTWARE, b"a frame long enough to trickle slowly")]);
    // Complete frames 300 ms apart keep the connection for more than the idle timeout.
    let mut busy = tcp_client(addr);
    for i in 0..6u8 {
        let mut id = [0u8; 12];
        id[0] = i;
        busy.write_all(&binding(id)).unwrap();
        assert!(
            BindingResponse::parse(&read_frame(&mut busy))
                .unwrap()
                .success
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A byte every 200 ms of a frame that never completes: closed at the idle timeout.
    let mut slow = tcp_client(addr);
    let closed_after = trickle(
        &mut slow,
        &frame[..frame.len() - 1],
        Duration::from_millis(200),
    )
    .expect("the trickling TURN connection was never closed");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(10)).contains(&closed_after),
        "{closed_after:?}"
    );
    server.shutdown();
}

/// Unauthenticated frames on a TURN stream go through the shared per-source limiter: a flood
/// on one connection is cut off instead of being answered without bound.
#[test]
fn turn_tcp_frames_are_rate_limited() {
    let server = start(|c| {
        c.udp = false;
        c.rate_limit = 10;
        c.rate_burst = 10;
        turn_on(c, 23140..=23159);
    });
    let addr = server.primary();
    let mut s = tcp_client(addr);
    let allocate = raw(message_type(0x003, Class::Request), &[]);
    let mut answers = 0;
    for _ in 0..100 {
        if s.write_all(&allocate).is_err() {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let closed = loop {
        let mut head = [0u8; 20];
        match s.read_exact(&mut head) {
            Ok(()) => {
                let len = wire::frame_len(&head).unwrap();
                let mut rest = vec![0u8; len - 20];
                if s.read_exact(&mut rest).is_err() {
                    break true;
                }
                answers += 1;
            }
            Err(e) => break e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
        }
    };
    assert!(closed, "the flooding connection is closed");
    assert!(
        (8..=15).contains(&answers),
        "{answers} answers to 100 Allocates with --rate-limit 10 --rate-burst 10"
    );
    let c = settle(server.stats(), "the limiter counted", |c| {
        c.rate_limited >= 1
    });
    assert_eq!(
        c.rate_limited, 1,
        "one refusal closes the connection: {c:?}"
    );
    server.shutdown();
}
