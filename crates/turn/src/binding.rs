//! Sans-IO STUN Binding responder with full RFC 5780 support (§6.1).
//!
//! [`Responder::handle`] takes one datagram (or TCP frame), where it arrived and who sent it,
//! and writes the answer into a caller buffer. It returns *what* to send and from which of the
//! (up to) four listening addresses; the driver does the sending. It never allocates.
//!
//! Public-server rules applied to every packet:
//! - anything that is not a well-formed STUN request is dropped silently (no error responses to
//!   garbage: they would make us a reflector);
//! - a response to an unauthenticated request is never more than `amplification` times the
//!   request on the wire (IP and UDP headers counted); optional attributes are left out first
//!   (SOFTWARE, then MAPPED-ADDRESS, FINGERPRINT), and PADDING is only ever as long as the
//!   request's own PADDING (capped by `max_padding`);
//! - per-source rate limiting is done by the driver with [`crate::ratelimit`].

use std::net::{IpAddr, SocketAddr};

use stun::wire::{
    self, BINDING, CHANGE_IP, CHANGE_PORT, Class, Message, MessageWriter, attr, message_type,
};

/// Index of a listening address: which IP (primary 0, alternate 1) and which port
/// (primary 0, alternate 1). RFC 5780 calls them A1/A2 and P1/P2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listener {
    /// 0 = primary IP, 1 = alternate IP.
    pub ip: u8,
    /// 0 = primary port, 1 = alternate port.
    pub port: u8,
}

impl Listener {
    /// (A1, P1).
    pub const PRIMARY: Listener = Listener { ip: 0, port: 0 };

    /// All four combinations.
    pub const ALL: [Listener; 4] = [
        Listener { ip: 0, port: 0 },
        Listener { ip: 0, port: 1 },
        Listener { ip: 1, port: 0 },
        Listener { ip: 1, port: 1 },
    ];

    /// Index 0..4 into a table of four.
    pub const fn index(self) -> usize {
        (self.ip as usize) * 2 + self.port as usize
    }
}

/// Transport the request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 5780 §3: CHANGE-REQUEST and RESPONSE-PORT are UDP-only).
    Tcp,
}

/// Responder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderConfig {
    /// Primary address (A1, P1).
    pub primary: SocketAddr,
    /// Alternate IP (A2) and port (P2). Both or neither: RFC 5780 needs both to answer
    /// CHANGE-REQUEST; without them the server is a plain RFC 8489 Binding server.
    pub alternate: Option<(IpAddr, u16)>,
    /// SOFTWARE attribute, if any.
    pub software: Option<String>,
    /// Largest PADDING echoed in a response.
    pub max_padding: usize,
    /// Largest response/request size ratio, IP and UDP headers included.
    pub amplification: usize,
}

impl ResponderConfig {
    /// A config with defaults for everything but the addresses.
    pub fn new(primary: SocketAddr, alternate: Option<(IpAddr, u16)>) -> Self {
        ResponderConfig {
            primary,
            alternate,
            software: Some(concat!("natscope turnd ", env!("CARGO_PKG_VERSION")).to_owned()),
            max_padding: 1200,
            amplification: 3,
        }
    }

    /// The socket address of a listener, if this server has it.
    pub fn address(&self, l: Listener) -> Option<SocketAddr> {
        let (alt_ip, alt_port) = match self.alternate {
            Some(a) => a,
            None if l == Listener::PRIMARY => return Some(self.primary),
            None => return None,
        };
        let ip = if l.ip == 0 { self.primary.ip() } else { alt_ip };
        let port = if l.port == 0 {
            self.primary.port()
        } else {
            alt_port
        };
        Some(SocketAddr::new(ip, port))
    }

    /// The listeners this server has.
    pub fn listeners(&self) -> impl Iterator<Item = (Listener, SocketAddr)> + '_ {
        Listener::ALL
            .into_iter()
            .filter_map(|l| self.address(l).map(|a| (l, a)))
    }
}

/// Why a packet got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a well-formed STUN message.
    Malformed(wire::WireError),
    /// A STUN message that is not a request (indication or response).
    NotRequest,
    /// FINGERPRINT present and wrong (RFC 8489 §7.3: discard).
    BadFingerprint,
    /// Even a minimal answer would exceed the amplification bound.
    TooSmall,
    /// The output buffer cannot hold the answer.
    NoRoom,
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Send from this listener.
    pub from: Listener,
    /// Send to this address.
    pub to: SocketAddr,
    /// The answer occupies `out[..len]`.
    pub len: usize,
    /// Error code of an error response, `None` for success.
    pub error: Option<u16>,
}

/// The outcome of one packet.
pub type Verdict = Result<Reply, Drop>;

/// Attributes a Binding server understands (so no 420 for them), beyond those it acts on.
const UNDERSTOOD: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::REALM,
    attr::NONCE,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PADDING,
    attr::RESPONSE_PORT,
];

/// Most UNKNOWN-ATTRIBUTES entries echoed back.
const MAX_UNKNOWN: usize = 8;

/// The Binding responder.
#[derive(Debug, Clone)]
pub struct Responder {
    config: ResponderConfig,
}

impl Responder {
    /// A responder.
    pub fn new(config: ResponderConfig) -> Self {
        Responder { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &ResponderConfig {
        &self.config
    }

    fn header_overhead(ip: &IpAddr) -> usize {
        match ip {
            IpAddr::V4(_) => 20 + 8,
            IpAddr::V6(_) => 40 + 8,
        }
    }

    /// Answer one packet that arrived on `local` from `src`. The reply is written to `out`.
    pub fn handle(
        &self,
        transport: Transport,
        local: Listener,
        src: SocketAddr,
        packet: &[u8],
        out: &mut [u8],
    ) -> Verdict {
        let msg = Message::parse(packet).map_err(Drop::Malformed)?;
        if msg.class() != Class::Request {
            return Err(Drop::NotRequest);
        }
        if msg.check_fingerprint().is_err() {
            return Err(Drop::BadFingerprint);
        }
        let overhead = Self::header_overhead(&src.ip());
        let budget = (packet.len() + overhead)
            .saturating_mul(self.config.amplification)
            .saturating_sub(overhead)
            .min(out.len());
        let out = out.get_mut(..budget).ok_or(Drop::NoRoom)?;
        let id = msg.transaction_id();
        let method = msg.method();
        let reply_here = |len, code| {
            Ok(Reply {
                from: local,
                to: src,
                len,
                error: Some(code),
            })
        };
        let error = |out: &mut [u8], code: u16, reason: &str, unknown: &[u16]| {
            let mut w = MessageWriter::new(out, message_type(method, Class::Error), &id)
                .map_err(|_| Drop::TooSmall)?;
            w.error_code(code, reason).map_err(|_| Drop::TooSmall)?;
            if !unknown.is_empty() {
                w.unknown_attributes(unknown).map_err(|_| Drop::TooSmall)?;
            }
            if msg.get(attr::FINGERPRINT).is_some() {
                // Optional: leave it out rather than drop the answer.
                let _ = w.fingerprint();
            }
            reply_here(w.finish(), code)
        };

        if method != BINDING {
            return error(out, 400, "Bad Request: only Binding is served here", &[]);
        }

        // Comprehension-required attributes we do not understand: 420 (RFC 8489 §6.3.1.1).
        let mut unknown = [0u16; MAX_UNKNOWN];
        let mut n_unknown = 0;
        for a in msg.attributes() {
            if attr::is_comprehension_required(a.attr_type)
                && !UNDERSTOOD.contains(&a.attr_type)
                && !unknown[..n_unknown].contains(&a.attr_type)
                && n_unknown < MAX_UNKNOWN
            {
                unknown[n_unknown] = a.attr_type;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            return error(out, 420, "Unknown Attribute", &unknown[..n_unknown]);
        }

        // CHANGE-REQUEST (RFC 5780 §7.2).
        let mut change = 0u32;
        if let Some(a) = msg.get(attr::CHANGE_REQUEST) {
            let [b0, b1, b2, b3] = a.value else {
                return error(out, 400, "Bad Request: CHANGE-REQUEST length", &[]);
            };
            change = u32::from_be_bytes([*b0, *b1, *b2, *b3]) & (CHANGE_IP | CHANGE_PORT);
        }
        if change != 0 {
            if self.config.alternate.is_none() {
                // Not an RFC 5780 server: "does not support CHANGE-REQUEST" (§6.1).
                return error(out, 420, "Unknown Attribute", &[attr::CHANGE_REQUEST]);
            }
            if transport == Transport::Tcp {
                return error(out, 400, "Bad Request: CHANGE-REQUEST is UDP-only", &[]);
            }
        }

        // RESPONSE-PORT (§7.5) and its conflict with PADDING (§6.1).
        let padding_requested = msg.get(attr::PADDING).map(|a| a.value.len());
        let mut to = src;
        if let Some(a) = msg.get(attr::RESPONSE_PORT) {
            // RFC 5780 §7.5: a 16-bit port and 16 bits of padding.
            let [hi, lo, _, _] = a.value else {
                return error(out, 400, "Bad Request: RESPONSE-PORT length", &[]);
            };
            if transport == Transport::Tcp {
                return error(out, 400, "Bad Request: RESPONSE-PORT is UDP-only", &[]);
            }
            if padding_requested.is_some() {
                return error(out, 400, "Bad Request: PADDING with RESPONSE-PORT", &[]);
            }
            let port = u16::from_be_bytes([*hi, *lo]);
            if port == 0 {
                return error(out, 400, "Bad Request: RESPONSE-PORT 0", &[]);
            }
            to.set_port(port);
        }

        let from = Listener {
            ip: local.ip ^ u8::from(change & CHANGE_IP != 0),
            port: local.port ^ u8::from(change & CHANGE_PORT != 0),
        };
        let origin = self.config.address(from).ok_or(Drop::NoRoom)?;
        // A wildcard listener (0.0.0.0 or ::, turnd's default) does not know which of the
        // host's addresses the request reached, and announcing the unspecified address would
        // mislead clients: RESPONSE-ORIGIN is left out. Only a plain RFC 8489 server can listen
        // on a wildcard (RFC 5780 mode needs concrete IPs, checked by the config), so
        // OTHER-ADDRESS is not affected (it is filtered the same way all the same).
        let origin = (!origin.ip().is_unspecified()).then_some(origin);
        // OTHER-ADDRESS: the listener that differs from the receiving one in both IP and port.
        let other = self
            .config
            .address(Listener {
                ip: local.ip ^ 1,
                port: local.port ^ 1,
            })
            .filter(|a| !a.ip().is_unspecified());

        let fingerprint = msg.get(attr::FINGERPRINT).is_some();
        let software = self.config.software.as_deref().unwrap_or("");
        let addr = MessageWriter::address_size(&src);
        let required = wire::HEADER_LEN
            + addr * (1 + usize::from(origin.is_some()) + usize::from(other.is_some()));
        let mut spare = budget.checked_sub(required).ok_or(Drop::TooSmall)?;
        let mut take = |n: usize| {
            let ok = n <= spare;
            if ok {
                spare -= n;
            }
            ok
        };
        let with_mapped = take(addr);
        let with_fingerprint = fingerprint && take(8);
        let with_software =
            !software.is_empty() && take(MessageWriter::attribute_size(software.len()));
        let padding = padding_requested.map(|want| {
            let want = want.min(self.config.max_padding);
            let room = spare.saturating_sub(4) / 4 * 4;
            want.min(room)
        });

        let mut w = MessageWriter::new(out, message_type(BINDING, Class::Success), &id)
            .map_err(|_| Drop::NoRoom)?;
        let built: Result<usize, wire::WireError> = (|| {
            w.address(attr::XOR_MAPPED_ADDRESS, src)?;
            if with_mapped {
                w.address(attr::MAPPED_ADDRESS, src)?;
            }
            if let Some(o) = origin {
                w.address(attr::RESPONSE_ORIGIN, o)?;
            }
            if let Some(o) = other {
                w.address(attr::OTHER_ADDRESS, o)?;
            }
            if with_software {
                w.attribute(attr::SOFTWARE, software.as_bytes())?;
            }
            if let Some(p) = padding {
                w.padding(p)?;
            }
            if with_fingerprint {
                w.fingerprint()?;
            }
            Ok(w.len())
        })();
        let len = built.map_err(|_| Drop::NoRoom)?;
        Ok(Reply {
            from,
            to,
            len,
            error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::rfc5780::{BindingRequest, BindingResponse};

    fn rfc5780() -> Responder {
        Responder::new(ResponderConfig::new(
            "192.0.2.1:3478".parse().unwrap(),
            Some(("192.0.2.2".parse().unwrap(), 3479)),
        ))
    }

    const CLIENT: &str = "198.51.100.9:40000";

    fn ask(
        r: &Responder,
        t: Transport,
        local: Listener,
        req: &BindingRequest,
    ) -> (Reply, BindingResponse) {
        let bytes = req.encode(&[9; 12]).unwrap();
        let mut out = [0u8; 2048];
        let reply = r
            .handle(t, local, CLIENT.parse().unwrap(), &bytes, &mut out)
            .unwrap();
        let resp = BindingResponse::parse(&out[..reply.len]).unwrap();
        (reply, resp)
    }

    #[test]
    fn plain_binding_has_all_rfc5780_attributes() {
        let (reply, resp) = ask(
            &rfc5780(),
            Transport::Udp,
            Listener::PRIMARY,
            &BindingRequest::default(),
        );
        assert!(resp.success);
        assert_eq!(reply.from, Listener::PRIMARY);
        assert_eq!(reply.to, CLIENT.parse().unwrap());
        assert_eq!(resp.xor_mapped, Some(CLIENT.parse().unwrap()));
        assert_eq!(resp.mapped, Some(CLIENT.parse().unwrap()));
        assert_eq!(
            resp.response_origin,
            Some("192.0.2.1:3478".parse().unwrap())
        );
        assert_eq!(resp.other_address, Some("192.0.2.2:3479".parse().unwrap()));
        assert!(resp.software.is_some());
        // 20-byte request: the answer stays within 3x on the wire.
        assert!((reply.len + 28) <= 3 * (20 + 28));
    }

    #[test]
    fn change_request_picks_the_listener_and_other_address_follows_the_receiver() {
        let r = rfc5780();
        let cases = [
            (false, false, Listener { ip: 0, port: 0 }),
            (true, false, Listener { ip: 1, port: 0 }),
            (false, true, Listener { ip: 0, port: 1 }),
            (true, true, Listener { ip: 1, port: 1 }),
        ];
        for (change_ip, change_port, want) in cases {
            let req = BindingRequest {
                change_ip,
                change_port,
                ..Default::default()
            };
            let (reply, resp) = ask(&r, Transport::Udp, Listener::PRIMARY, &req);
            assert_eq!(reply.from, want);
            assert_eq!(resp.response_origin, r.config().address(want));
        }
        // Received on (A2, P1): OTHER-ADDRESS is (A1, P2).
        let (_, resp) = ask(
            &r,
            Transport::Udp,
            Listener { ip: 1, port: 0 },
            &BindingRequest::default(),
        );
        assert_eq!(resp.other_address, Some("192.0.2.1:3479".parse().unwrap()));
        assert_eq!(
            resp.response_origin,
            Some("192.0.2.2:3478".parse().unwrap())
        );
    }

    #[test]
    fn response_port_redirects_and_conflicts_with_padding() {
        let r = rfc5780();
        let req = BindingRequest {
            response_port: Some(5555),
            ..Default::default()
        };
        let (reply, resp) = ask(&r, Transport::Udp, Listener::PRIMARY, &req);
        assert_eq!(reply.to, "198.51.100.9:5555".parse().unwrap());
        assert!(resp.success);
        let req = BindingRequest {
            response_port: Some(5555),
            padding: Some(100),
            ..Default::default()
        };
        let (reply, resp) = ask(&r, Transport::Udp, Listener::PRIMARY, &req);
        assert_eq!(resp.error.map(|e| e.0), Some(400));
        assert_eq!(reply.to, CLIENT.parse().unwrap(), "errors go to the source");
    }

    #[test]
    fn padding_is_echoed_within_bounds() {
        let r = rfc5780();
        for (asked, want) in [(0, 0), (100, 100), (1000, 1000), (1400, 1200)] {
            let req = BindingRequest {
                padding: Some(asked),
                ..Default::default()
            };
            let (_, resp) = ask(&r, Transport::Udp, Listener::PRIMARY, &req);
            assert_eq!(resp.padding, Some(want), "asked {asked}");
        }
    }

    #[test]
    fn unknown_comprehension_required_gets_420() {
        let mut buf = [0u8; 64];
        let mut w =
            MessageWriter::new(&mut buf, message_type(BINDING, Class::Request), &[1; 12]).unwrap();
        w.attribute(0x7ABC, b"hi").unwrap();
        w.attribute(0xC001, b"optional is fine").unwrap_or(());
        let n = w.finish();
        let mut out = [0u8; 512];
        let reply = rfc5780()
            .handle(
                Transport::Udp,
                Listener::PRIMARY,
                CLIENT.parse().unwrap(),
                &buf[..n],
                &mut out,
            )
            .unwrap();
        let resp = BindingResponse::parse(&out[..reply.len]).unwrap();
        assert_eq!(resp.error.map(|e| e.0), Some(420));
        assert_eq!(resp.unknown_attributes, [0x7ABC]);
    }

    #[test]
    fn plain_server_refuses_change_request_with_420() {
        let r = Responder::new(ResponderConfig::new(
            "192.0.2.1:3478".parse().unwrap(),
            None,
        ));
        let req = BindingRequest {
            change_ip: true,
            ..Default::default()
        };
        let (_, resp) = ask(&r, Transport::Udp, Listener::PRIMARY, &req);
        assert_eq!(resp.error.map(|e| e.0), Some(420));
        assert_eq!(resp.unknown_attributes, [attr::CHANGE_REQUEST]);
        let (_, resp) = ask(
            &r,
            Transport::Udp,
            Listener::PRIMARY,
            &BindingRequest::default(),
        );
        assert!(resp.success);
        assert_eq!(resp.other_address, None);
    }

    /// turnd's default listen address is 0.0.0.0:3478: its answers must not announce
    /// 0.0.0.0 (or ::) as their origin.
    #[test]
    fn wildcard_listener_omits_response_origin() {
        for (listen, client) in [
            ("0.0.0.0:3478", CLIENT),
            ("[::]:3478", "[2001:db8::9]:40000"),
        ] {
            let r = Responder::new(ResponderConfig::new(listen.parse().unwrap(), None));
            let bytes = BindingRequest::default().encode(&[9; 12]).unwrap();
            let mut out = [0u8; 2048];
            let src: SocketAddr = client.parse().unwrap();
            let reply = r
                .handle(Transport::Udp, Listener::PRIMARY, src, &bytes, &mut out)
                .unwrap();
            let resp = BindingResponse::parse(&out[..reply.len]).unwrap();
            assert!(resp.success, "{listen}");
            assert_eq!(resp.xor_mapped, Some(src), "{listen}");
            assert_eq!(resp.response_origin, None, "{listen}: announced a wildcard");
            assert_eq!(resp.other_address, None, "{listen}");
            let m = Message::parse(&out[..reply.len]).unwrap();
            assert!(m.get(attr::RESPONSE_ORIGIN).is_none(), "{listen}");
        }
        // A concrete listener still announces itself.
        let r = Responder::new(ResponderConfig::new(
            "192.0.2.1:3478".parse().unwrap(),
            None,
        ));
        let (_, resp) = ask(
            &r,
            Transport::Udp,
            Listener::PRIMARY,
            &BindingRequest::default(),
        );
        assert_eq!(
            resp.response_origin,
            Some("192.0.2.1:3478".parse().unwrap())
        );
    }

    #[test]
    fn tcp_refuses_udp_only_attributes() {
        let r = rfc5780();
        for req in [
            BindingRequest {
                change_port: true,
                ..Default::default()
            },
            BindingRequest {
                response_port: Some(9),
                ..Default::default()
            },
        ] {
            let (_, resp) = ask(&r, Transport::Tcp, Listener::PRIMARY, &req);
            assert_eq!(resp.error.map(|e| e.0), Some(400));
        }
        let (_, resp) = ask(
            &r,
            Transport::Tcp,
            Listener::PRIMARY,
            &BindingRequest::default(),
        );
        assert!(resp.success);
    }

    #[test]
    fn garbage_and_non_requests_are_dropped() {
        let r = rfc5780();
        let mut out = [0u8; 512];
        let src = CLIENT.parse().unwrap();
        assert!(matches!(
            r.handle(
                Transport::Udp,
                Listener::PRIMARY,
                src,
                &[0x80; 40],
                &mut out
            ),
            Err(Drop::Malformed(_))
        ));
        let mut buf = [0u8; 32];
        let w =
            MessageWriter::new(&mut buf, message_type(BINDING, Class::Success), &[1; 12]).unwrap();
        let n = w.finish();
        assert_eq!(
            r.handle(Transport::Udp, Listener::PRIMARY, src, &buf[..n], &mut out),
            Err(Drop::NotRequest)
        );
        // A wrong FINGERPRINT is discarded.
        let mut req = BindingRequest {
            fingerprint: true,
            ..Default::default()
        }
        .encode(&[2; 12])
        .unwrap();
        let last = req.len() - 1;
        req[last] ^= 1;
        assert_eq!(
            r.handle(Transport::Udp, Listener::PRIMARY, src, &req, &mut out),
            Err(Drop::BadFingerprint)
        );
    }

    #[test]
    fn ipv6_response_fits_the_amplification_bound() {
        let r = Responder::new(ResponderConfig::new(
            "[2001:db8::1]:3478".parse().unwrap(),
            Some(("2001:db8::2".parse().unwrap(), 3479)),
        ));
        let bytes = BindingRequest {
            fingerprint: true,
            ..Default::default()
        }
        .encode(&[3; 12])
        .unwrap();
        let mut out = [0u8; 1024];
        let src: SocketAddr = "[2001:db8::99]:5000".parse().unwrap();
        let reply = r
            .handle(Transport::Udp, Listener::PRIMARY, src, &bytes, &mut out)
            .unwrap();
        let resp = BindingResponse::parse(&out[..reply.len]).unwrap();
        assert_eq!(resp.xor_mapped, Some(src));
        assert!(resp.other_address.is_some() && resp.mapped.is_some());
        assert_eq!(resp.fingerprint, Some(true));
        assert!(reply.len + 48 <= 3 * (bytes.len() + 48));
    }

    #[test]
    fn tight_amplification_drops_optional_attributes_first() {
        let mut cfg = ResponderConfig::new(
            "192.0.2.1:3478".parse().unwrap(),
            Some(("192.0.2.2".parse().unwrap(), 3479)),
        );
        cfg.amplification = 2; // 20-byte request: 96 - 28 = 68 bytes for the answer
        let r = Responder::new(cfg);
        let (reply, resp) = ask(
            &r,
            Transport::Udp,
            Listener::PRIMARY,
            &BindingRequest::default(),
        );
        assert!(reply.len <= 68);
        assert!(resp.xor_mapped.is_some() && resp.response_origin.is_some());
        assert!(resp.other_address.is_some());
        assert!(resp.software.is_none());
    }
}
