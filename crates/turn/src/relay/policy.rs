//! Which peers a relay may talk to (RFC 8656 §21.1.4 and §22.4; the CVE-2020-26262 class of
//! abuse, where a TURN server is used to reach its own host or internal networks).
//!
//! The order of the checks:
//! 1. the server's own service addresses (listeners, metrics) are always denied;
//! 2. the deny list (CIDR) denies;
//! 3. a peer that is a live relay address of this server (a relay socket an allocation holds
//!    right now) is allowed: two clients of one server talking to each other is the common
//!    case, and it works even when the relay IP is private;
//! 4. the allow list (CIDR) allows (an explicit operator decision: it also opens the server's
//!    own IPs, which tests and benchmarks on loopback need);
//! 5. any other port on the server's own relay or listen IPs is denied (datagrams to the
//!    host's own address are delivered locally, past firewall rules that only see the
//!    outside: DNS, NTP, SNMP... bound to 0.0.0.0 would be reachable);
//! 6. unless defaults are switched off: loopback, unspecified, link-local, private (RFC 1918,
//!    100.64/10, ULA), multicast, broadcast, "this network" 0/8, and IPv4 mapped/compatible
//!    forms of those are denied;
//! 7. everything else is allowed.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

/// An IP prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// A prefix; `len` is capped at the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        Cidr {
            addr,
            len: len.min(max),
        }
    }

    /// Does the prefix contain `ip`? IPv4-mapped IPv6 addresses match IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP prefix (like 10.0.0.0/8 or ::1/128)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr::new(addr, len))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4, so mapped forms cannot dodge IPv4 rules.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Addresses denied unless allowed explicitly.
pub fn default_denied(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_denied(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                // IPv4-compatible ::a.b.c.d and NAT64 64:ff9b::/96 wrapping a denied IPv4.
                || (s[..6] == [0; 6] && v4_denied(Ipv4Addr::from(embedded_v4(v6))))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && v4_denied(Ipv4Addr::from(embedded_v4(v6))))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> [u8; 4] {
    let o = v6.octets();
    [o[12], o[13], o[14], o[15]]
}

fn v4_denied(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_unspecified()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// One of the server's own service addresses.
    ServiceAddress,
    /// In the deny list.
    DenyList,
    /// The server's own relay or listen IP on a port that is not a live relay address.
    OwnAddress,
    /// A private, loopback, link-local... address not allowed explicitly.
    Default,
}

/// The relay addresses allocations hold right now, shared by every core of a server (touched
/// only when an allocation is created or freed, and by CreatePermission / ChannelBind).
#[derive(Debug, Default)]
pub struct LiveRelays(Mutex<HashSet<SocketAddr>>);

impl LiveRelays {
    fn key(addr: SocketAddr) -> SocketAddr {
        SocketAddr::new(canonical(addr.ip()), addr.port())
    }

    /// A relay socket was bound for an allocation.
    pub fn insert(&self, addr: SocketAddr) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.insert(Self::key(addr));
    }

    /// A relay socket was closed.
    pub fn remove(&self, addr: SocketAddr) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.remove(&Self::key(addr));
    }

    /// Is `addr` (in any IPv4-mapped form) a live relay address?
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.contains(&Self::key(addr))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// None at all?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for LiveRelays {
    /// A snapshot: the clone does not follow later changes.
    fn clone(&self) -> Self {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        LiveRelays(Mutex::new(g.clone()))
    }
}

/// The peer-address policy.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Allowed prefixes (checked after the service ports, the deny list and live relays, and
    /// before the own-IP rule and the defaults).
    pub allow: Vec<Cidr>,
    /// Denied prefixes (checked before everything but the service ports).
    pub deny: Vec<Cidr>,
    /// Deny private/loopback/link-local/... addresses not in `allow` (default true).
    pub deny_defaults: bool,
    /// The server's relay IPs.
    pub relay_ips: Vec<IpAddr>,
    /// The relay port range.
    pub relay_ports: Option<RangeInclusive<u16>>,
    /// The server's own service addresses (listeners, metrics); an unspecified IP matches any
    /// IP with that port. Their concrete IPs count as the server's own IPs.
    pub service: Vec<SocketAddr>,
    /// Relay addresses in use; only these are exempt as "own relays".
    pub live: LiveRelays,
}

impl PeerPolicy {
    /// The default policy: defaults denied, nothing else.
    pub fn new() -> Self {
        PeerPolicy {
            deny_defaults: true,
            ..Default::default()
        }
    }

    /// Is `peer` a relay address an allocation on this server holds right now?
    pub fn is_own_relay(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        self.relay_ips.iter().any(|r| canonical(*r) == ip)
            && self
                .relay_ports
                .as_ref()
                .is_some_and(|r| r.contains(&peer.port()))
            && self.live.contains(peer)
    }

    /// Is `ip` one of the server's own relay or (concrete) listen IPs?
    fn is_own_ip(&self, ip: IpAddr) -> bool {
        self.relay_ips.iter().any(|r| canonical(*r) == ip)
            || self
                .service
                .iter()
                .any(|s| !s.ip().is_unspecified() && canonical(s.ip()) == ip)
    }

    /// May a client relay to and from `peer`?
    pub fn check(&self, peer: SocketAddr) -> Result<(), Refusal> {
        let ip = canonical(peer.ip());
        let service = self.service.iter().any(|s| {
            s.port() == peer.port()
                && (canonical(s.ip()) == ip
                    || (s.ip().is_unspecified() && s.is_ipv4() == ip.is_ipv4())
                    || self.is_own_ip(ip))
        });
        if service {
            return Err(Refusal::ServiceAddress);
        }
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::DenyList);
        }
        if self.is_own_relay(peer) {
            return Ok(());
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if self.is_own_ip(ip) {
            return Err(Refusal::OwnAddress);
        }
        if self.deny_defaults && default_denied(ip) {
            return Err(Refusal::Default);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()), "mapped");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert!(host.contains("2001:db8::1".parse().unwrap()));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn default_policy_denies_internal_ranges() {
        let p = PeerPolicy::new();
        for bad in [
            "127.0.0.1:80",
            "0.0.0.0:3478",
            "[::]:3478",
            "[::1]:22",
            "10.0.0.1:1",
            "172.16.5.5:1",
            "192.168.1.1:1",
            "100.64.0.1:1",
            "169.254.169.254:80",
            "[fe80::1]:1",
            "[fd00::1]:1",
            "[::ffff:127.0.0.1]:1",
            "[::ffff:10.0.0.1]:1",
            "[64:ff9b::7f00:1]:1",
            "224.0.0.1:1",
            "255.255.255.255:1",
        ] {
            assert_eq!(p.check(sa(bad)), Err(Refusal::Default), "{bad}");
        }
        for good in ["203.0.113.5:4000", "198.51.100.1:1", "[2001:db8::5]:9"] {
            assert_eq!(p.check(sa(good)), Ok(()), "{good}");
        }
    }

    #[test]
    fn lists_own_relays_and_service_ports() {
        let mut p = PeerPolicy::new();
        p.allow.push("127.0.0.0/8".parse().unwrap());
        p.deny.push("203.0.113.0/24".parse().unwrap());
        p.relay_ips.push("127.0.0.1".parse().unwrap());
        p.relay_ports = Some(49152..=65535);
        p.service.push(sa("127.0.0.1:3478"));
        p.service.push(sa("0.0.0.0:9641"));
        assert_eq!(p.check(sa("127.0.0.1:5000")), Ok(()), "allow list");
        assert_eq!(p.check(sa("127.0.0.1:3478")), Err(Refusal::ServiceAddress));
        assert_eq!(p.check(sa("127.0.0.9:9641")), Err(Refusal::ServiceAddress));
        assert_eq!(p.check(sa("203.0.113.1:1")), Err(Refusal::DenyList));
        p.live.insert(sa("127.0.0.1:50000"));
        assert_eq!(p.check(sa("127.0.0.1:50000")), Ok(()), "own relay");
        // Own live relay addresses are allowed even where defaults deny them...
        let mut q = PeerPolicy::new();
        q.relay_ips.push("10.0.0.1".parse().unwrap());
        q.relay_ports = Some(50000..=50010);
        q.live.insert(sa("10.0.0.1:50005"));
        assert_eq!(q.check(sa("10.0.0.1:50005")), Ok(()));
        assert_eq!(q.check(sa("[::ffff:10.0.0.1]:50005")), Ok(()), "mapped");
        // ...but not other ports of the range: no relay socket is there.
        assert_eq!(q.check(sa("10.0.0.1:50006")), Err(Refusal::OwnAddress));
        assert_eq!(q.check(sa("10.0.0.1:50011")), Err(Refusal::OwnAddress));
        q.live.remove(sa("10.0.0.1:50005"));
        assert_eq!(q.check(sa("10.0.0.1:50005")), Err(Refusal::OwnAddress));
        assert!(q.live.is_empty());
    }

    #[test]
    fn deny_list_and_service_ports_beat_the_own_relay_exemption() {
        let mut p = PeerPolicy::new();
        p.relay_ips = vec!["10.0.0.5".parse().unwrap()];
        p.relay_ports = Some(49152..=65535);
        p.deny.push("10.0.0.0/8".parse().unwrap());
        p.live.insert(sa("10.0.0.5:50000"));
        for peer in [
            "10.0.0.5:51820",
            "[::ffff:10.0.0.5]:51820",
            "10.0.0.5:50000",
            "[::ffff:10.0.0.5]:50000",
        ] {
            assert_eq!(p.check(sa(peer)), Err(Refusal::DenyList), "{peer}");
        }
        // A listener port inside the relay range (a misconfiguration config.rs refuses) is
        // still a service address, live or not.
        let mut p = PeerPolicy::new();
        p.relay_ips = vec!["198.51.100.5".parse().unwrap()];
        p.relay_ports = Some(3000..=4000);
        p.service.push(sa("198.51.100.5:3478"));
        p.live.insert(sa("198.51.100.5:3478"));
        assert_eq!(
            p.check(sa("198.51.100.5:3478")),
            Err(Refusal::ServiceAddress)
        );
        assert_eq!(
            p.check(sa("[::ffff:198.51.100.5]:3478")),
            Err(Refusal::ServiceAddress)
        );
    }

    #[test]
    fn own_relay_and_listen_ips_are_denied_on_other_ports() {
        // A public relay IP: the defaults would allow it, the own-IP rule does not (a datagram
        // to the host's own address is delivered locally, to whatever listens on 0.0.0.0).
        let mut p = PeerPolicy::new();
        p.relay_ips = vec!["198.51.100.5".parse().unwrap()];
        p.relay_ports = Some(50000..=50010);
        p.service = vec![sa("198.51.100.6:3478"), sa("0.0.0.0:9641")];
        for peer in [
            "198.51.100.5:53",
            "198.51.100.5:161",
            "[::ffff:198.51.100.5]:123",
            "198.51.100.6:53",
            "[::ffff:198.51.100.6]:53",
        ] {
            assert_eq!(p.check(sa(peer)), Err(Refusal::OwnAddress), "{peer}");
        }
        assert_eq!(
            p.check(sa("198.51.100.6:9641")),
            Err(Refusal::ServiceAddress)
        );
        assert_eq!(p.check(sa("198.51.100.7:53")), Ok(()), "a neighbour");
        // An explicit allow list entry opens them (loopback tests and benchmarks).
        p.allow.push("198.51.100.5/32".parse().unwrap());
        assert_eq!(p.check(sa("198.51.100.5:53")), Ok(()));
        assert_eq!(p.check(sa("198.51.100.6:53")), Err(Refusal::OwnAddress));
    }

    #[test]
    fn defaults_cover_this_network_and_embedded_forms() {
        let p = PeerPolicy::new();
        for bad in [
            "0.1.2.3:53",
            "[::ffff:0.1.2.3]:53",
            "[::10.0.0.1]:1",
            "[::127.0.0.1]:1",
            "[::192.168.0.1]:1",
            "[::ffff:192.168.0.1]:1",
            "[::ffff:169.254.169.254]:80",
            "[64:ff9b::a00:1]:1",
            "192.0.0.8:1",
            "198.18.0.1:1",
            "240.0.0.1:1",
        ] {
            assert_eq!(p.check(sa(bad)), Err(Refusal::Default), "{bad}");
        }
        assert_eq!(p.check(sa("[::203.0.113.5]:1")), Ok(()));
    }
}
