//! Candidates: types, priorities and foundations (RFC 8445 §5.1.2, §5.1.1.3), and their
//! `a=candidate` attribute syntax (RFC 8839 §5.1).
//!
//! The parser takes untrusted text (SDP from a browser, a copy-pasted blob) and never panics:
//! every field is checked and a clear [`SdpError`] comes back instead.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::sdp::SdpError;

/// Candidate type (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateKind {
    /// An address on a local interface.
    Host,
    /// A peer-reflexive address learnt from a connectivity check.
    PeerReflexive,
    /// A server-reflexive address learnt from a STUN server (or a TURN server's mapped address).
    ServerReflexive,
    /// A relayed address on a TURN server.
    Relayed,
}

impl CandidateKind {
    /// The SDP name: `host`, `prflx`, `srflx`, `relay`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::Relayed => "relay",
        }
    }

    /// Parse the SDP name.
    pub fn parse(s: &str) -> Option<CandidateKind> {
        match s {
            "host" => Some(CandidateKind::Host),
            "prflx" => Some(CandidateKind::PeerReflexive),
            "srflx" => Some(CandidateKind::ServerReflexive),
            "relay" => Some(CandidateKind::Relayed),
            _ => None,
        }
    }

    /// Recommended type preference (RFC 8445 §5.1.2.2).
    pub const fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relayed => 0,
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a candidate. Only UDP candidates are paired; TCP candidates
/// (RFC 6544) are parsed so that SDP from other stacks is accepted, then ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP (RFC 6544), not used for checks.
    Tcp,
}

/// Largest component ID allowed by RFC 8445 §5.1.2.1 (1..=256).
pub const MAX_COMPONENT: u16 = 256;

/// Compute a candidate priority (RFC 8445 §5.1.2.1):
/// `2^24 * type preference + 2^8 * local preference + (256 - component)`.
pub const fn priority(type_preference: u32, local_preference: u16, component: u16) -> u32 {
    let c = if component == 0 || component > MAX_COMPONENT {
        MAX_COMPONENT
    } else {
        component
    };
    (type_preference << 24) + ((local_preference as u32) << 8) + (256 - c as u32)
}

/// Local preference for a base address (RFC 8445 §5.1.2.1, RFC 8421 for dual stack): IPv6
/// before IPv4 (address families interleave through the type preference anyway), loopback
/// last, earlier interfaces before later ones; relays over TCP/TLS below relays over UDP.
pub fn local_preference(base: IpAddr, index: usize, relay_transport_penalty: u16) -> u16 {
    let family: u16 = match base {
        _ if base.is_loopback() => 0x2000,
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => 0x4000,
        IpAddr::V6(_) => 0xC000,
        IpAddr::V4(_) => 0x8000,
    };
    let idx = u16::try_from(index.min(0x0FFF)).unwrap_or(0x0FFF);
    (family - relay_transport_penalty.min(0x1000)).saturating_add(0x0FFF - idx)
}

/// One candidate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Foundation: equal for candidates of the same type, base IP, server and transport.
    pub foundation: String,
    /// Component ID (1 for RTP / the only component).
    pub component: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Priority.
    pub priority: u32,
    /// The transport address.
    pub addr: SocketAddr,
    /// The type.
    pub kind: CandidateKind,
    /// Related address (`raddr`/`rport`): the base for srflx/prflx, the mapped address for relay.
    pub related: Option<SocketAddr>,
    /// RFC 6544 `tcptype`, for TCP candidates.
    pub tcp_type: Option<String>,
    /// Other extension attributes, in order (`generation`, `network-id`, `ufrag`...).
    pub extensions: Vec<(String, String)>,
}

impl Candidate {
    /// A UDP candidate with no extensions.
    pub fn new(
        kind: CandidateKind,
        addr: SocketAddr,
        priority: u32,
        foundation: impl Into<String>,
        related: Option<SocketAddr>,
    ) -> Candidate {
        Candidate {
            foundation: foundation.into(),
            component: 1,
            protocol: Protocol::Udp,
            priority,
            addr,
            kind,
            related,
            tcp_type: None,
            extensions: Vec::new(),
        }
    }

    /// Parse the attribute value, with or without the `a=` and `candidate:` prefixes
    /// (RFC 8839 §5.1).
    pub fn parse(line: &str) -> Result<Candidate, SdpError> {
        let s = line.trim();
        let s = s.strip_prefix("a=").unwrap_or(s);
        let s = s.strip_prefix("candidate:").unwrap_or(s);
        let mut it = s.split_ascii_whitespace();
        let mut next = |what: &'static str| it.next().ok_or(SdpError::Missing(what));
        let foundation = next("foundation")?;
        if foundation.is_empty()
            || foundation.len() > 32
            || !foundation.bytes().all(crate::sdp::is_ice_char)
        {
            return Err(SdpError::Invalid("foundation", foundation.to_owned()));
        }
        let component_s = next("component-id")?;
        let component: u16 = component_s
            .parse()
            .ok()
            .filter(|c| (1..=MAX_COMPONENT).contains(c))
            .ok_or_else(|| SdpError::Invalid("component-id", component_s.to_owned()))?;
        let transport = next("transport")?;
        let protocol = if transport.eq_ignore_ascii_case("udp") {
            Protocol::Udp
        } else if transport.eq_ignore_ascii_case("tcp") {
            Protocol::Tcp
        } else {
            return Err(SdpError::Unsupported("transport", transport.to_owned()));
        };
        let prio_s = next("priority")?;
        let priority: u32 = prio_s
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| SdpError::Invalid("priority", prio_s.to_owned()))?;
        let addr_s = next("connection-address")?;
        let ip = parse_ip(addr_s)?;
        let port_s = next("port")?;
        let port: u16 = port_s
            .parse()
            .map_err(|_| SdpError::Invalid("port", port_s.to_owned()))?;
        let typ = next("typ")?;
        if typ != "typ" {
            return Err(SdpError::Invalid("typ", typ.to_owned()));
        }
        let kind_s = next("cand-type")?;
        let kind = CandidateKind::parse(kind_s)
            .ok_or_else(|| SdpError::Unsupported("cand-type", kind_s.to_owned()))?;
        let mut raddr = None;
        let mut rport = None;
        let mut tcp_type = None;
        let mut extensions = Vec::new();
        while let Some(name) = it.next() {
            let value = it
                .next()
                .ok_or(SdpError::Missing("extension attribute value"))?;
            match name {
                "raddr" => raddr = Some(parse_ip(value)?),
                "rport" => {
                    rport = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| SdpError::Invalid("rport", value.to_owned()))?,
                    )
                }
                "tcptype" => tcp_type = Some(value.to_owned()),
                _ => {
                    if extensions.len() >= 16 {
                        return Err(SdpError::Invalid("extensions", "too many".into()));
                    }
                    extensions.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        let related = match (raddr, rport) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            (Some(ip), None) => Some(SocketAddr::new(ip, 0)),
            (None, Some(_)) => return Err(SdpError::Missing("raddr")),
            (None, None) => None,
        };
        Ok(Candidate {
            foundation: foundation.to_owned(),
            component,
            protocol,
            priority,
            addr: SocketAddr::new(ip, port),
            kind,
            related,
            tcp_type,
            extensions,
        })
    }

    /// The attribute value, without `a=` (`candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host`).
    pub fn to_sdp(&self) -> String {
        self.to_string()
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, SdpError> {
    // Some stacks bracket IPv6 literals; RFC 8839 does not, accept both.
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(ip),
        // mDNS names (`<uuid>.local`, RFC 8839 §5.1 allows FQDNs): the caller may resolve them.
        Err(_) if !s.is_empty() && s.len() <= 253 => Err(SdpError::Hostname(s.to_owned())),
        Err(_) => Err(SdpError::Invalid("connection-address", s.to_owned())),
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        };
        write!(
            f,
            "candidate:{} {} {} {} {} {} typ {}",
            self.foundation,
            self.component,
            proto,
            self.priority,
            self.addr.ip(),
            self.addr.port(),
            self.kind
        )?;
        if let Some(r) = self.related {
            write!(f, " raddr {} rport {}", r.ip(), r.port())?;
        }
        if let Some(t) = &self.tcp_type {
            write!(f, " tcptype {t}")?;
        }
        for (k, v) in &self.extensions {
            write!(f, " {k} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_formula_rfc8445_5_1_2_1() {
        // Host, local preference 65535, component 1: 2^24*126 + 2^8*65535 + 255.
        assert_eq!(priority(126, 65535, 1), 2_130_706_431);
        assert_eq!(priority(0, 0, 256), 0);
        assert_eq!(priority(100, 65535, 1), 1_694_498_815);
        // Out-of-range components saturate instead of underflowing.
        assert_eq!(priority(0, 0, 999), 0);
    }

    #[test]
    fn local_preferences_order_families() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(local_preference(v6, 0, 0) > local_preference(v4, 0, 0));
        assert!(local_preference(v4, 0, 0) > local_preference(v4, 1, 0));
        assert!(local_preference(v4, 5, 0) > local_preference(lo, 0, 0));
        assert!(local_preference(v4, 0, 0) > local_preference(v4, 0, 0x800));
    }

    #[test]
    fn parses_browser_candidates() {
        let c = Candidate::parse(
            "a=candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 10.0.0.2 rport 61665 generation 0 network-cost 999",
        )
        .unwrap();
        assert_eq!(c.kind, CandidateKind::ServerReflexive);
        assert_eq!(c.addr, "203.0.113.7:61665".parse().unwrap());
        assert_eq!(c.related, Some("10.0.0.2:61665".parse().unwrap()));
        assert_eq!(c.extensions.len(), 2);
        assert_eq!(
            c.to_string(),
            "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 10.0.0.2 rport 61665 generation 0 network-cost 999"
        );
        let t = Candidate::parse(
            "candidate:1 1 TCP 1518280447 192.0.2.5 9 typ host tcptype active generation 0",
        )
        .unwrap();
        assert_eq!(t.protocol, Protocol::Tcp);
        assert_eq!(t.tcp_type.as_deref(), Some("active"));
        let v6 =
            Candidate::parse("candidate:3 1 UDP 2122262783 2001:db8::5 5000 typ host").unwrap();
        assert_eq!(v6.addr, "[2001:db8::5]:5000".parse().unwrap());
        assert_eq!(
            Candidate::parse("candidate:1 1 udp 2122262783 abcd-1234.local 5000 typ host"),
            Err(SdpError::Hostname("abcd-1234.local".into()))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "candidate:",
            "candidate:1",
            "candidate:1 0 udp 1 192.0.2.1 1 typ host",
            "candidate:1 257 udp 1 192.0.2.1 1 typ host",
            "candidate:1 1 sctp 1 192.0.2.1 1 typ host",
            "candidate:1 1 udp 0 192.0.2.1 1 typ host",
            "candidate:1 1 udp 1 192.0.2.1 70000 typ host",
            "candidate:1 1 udp 1 192.0.2.1 1 type host",
            "candidate:1 1 udp 1 192.0.2.1 1 typ bogus",
            "candidate:1 1 udp 1 192.0.2.1 1 typ host raddr",
            "candidate:1 1 udp 1 192.0.2.1 1 typ host rport 5",
            "candidate:f\u{e9} 1 udp 1 192.0.2.1 1 typ host",
        ] {
            assert!(Candidate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
