//! What RFC 4787 behaviour allows: can two peers, each behind its own chain of NATs, connect
//! directly with ICE connectivity checks (RFC 8445), and which candidate types does the
//! working pair use?
//!
//! This is an oracle for tests and connectivity matrices. It does not use [`crate::Nat`]: it
//! carries its own few lines of RFC 4787 semantics (mappings keyed by nothing, the destination
//! address, or the destination address and port; filters keyed the same way on what a mapping
//! has sent to) and replays the ICE exchange symbolically until nothing changes:
//!
//! - each agent sends checks from its one base (host and server-reflexive candidates share
//!   it) to the other's server-reflexive candidate, learned from a STUN server;
//! - a request that arrives is answered from the same base, its source becomes a
//!   peer-reflexive candidate, and a triggered check goes back to it (§7.3.1);
//! - a check succeeds only if the response comes from the address the request went to
//!   (§7.2.5.2.1, symmetric addresses);
//! - the peers connect when each has a succeeded check.
//!
//! A chain of NAT levels behaves as one level whose mapping and filtering are the most
//! dependent of the chain's: an inbound packet must pass every level's filter, each keyed on
//! the same remote endpoint, and the outermost external port depends on the destination as
//! soon as any level's does.

use crate::Behavior;

/// One NAT level on a peer's way out, in RFC 4787 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Mapping behaviour (ignored when `translates` is false).
    pub mapping: Behavior,
    /// Filtering behaviour.
    pub filtering: Behavior,
    /// False for a firewall: filtering without translation.
    pub translates: bool,
    /// The level drops all UDP.
    pub udp_blocked: bool,
}

impl Level {
    /// A NAT level.
    pub const fn nat(mapping: Behavior, filtering: Behavior) -> Level {
        Level {
            mapping,
            filtering,
            translates: true,
            udp_blocked: false,
        }
    }
}

/// The candidate type a peer sees on the far end of the working pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remote {
    /// The remote's server-reflexive (or, without NAT, host) candidate, as signalled.
    Signalled,
    /// A peer-reflexive candidate learned from an incoming check.
    PeerReflexive,
}

/// What the oracle expects for a direct (non-relayed) ICE path between two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Connects; what each side's working pair points at (a's view, b's view).
    Connects(Remote, Remote),
    /// Cannot connect without a relay.
    Impossible,
    /// UDP does not get through at all on one side (no STUN, no checks, no TURN over UDP).
    UdpBlocked,
}

/// How dependent a behaviour is: endpoint-independent 0, address-dependent 1,
/// address-and-port-dependent 2.
pub fn rank(b: Behavior) -> u8 {
    match b {
        Behavior::EndpointIndependent => 0,
        Behavior::AddressDependent => 1,
        Behavior::AddressAndPortDependent => 2,
    }
}

/// The single level a chain behaves as: `None` when nothing translates or filters.
pub fn effective(chain: &[Level]) -> Option<Level> {
    if chain.is_empty() {
        return None;
    }
    let mut out = Level {
        mapping: Behavior::EndpointIndependent,
        filtering: Behavior::EndpointIndependent,
        translates: false,
        udp_blocked: false,
    };
    for l in chain {
        out.udp_blocked |= l.udp_blocked;
        if l.translates {
            out.translates = true;
            if rank(l.mapping) > rank(out.mapping) {
                out.mapping = l.mapping;
            }
        }
        if rank(l.filtering) > rank(out.filtering) {
            out.filtering = l.filtering;
        }
    }
    Some(out)
}

/// Symbolic addresses: peer A's public IP, peer B's, the STUN server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ip {
    A,
    B,
    Stun,
}

type Endpoint = (Ip, u32);

/// One side's NAT, symbolically.
#[derive(Debug)]
struct Side {
    ip: Ip,
    level: Option<Level>,
    /// (mapping key, external port, endpoints this mapping sent to).
    mappings: Vec<(Option<Endpoint>, u32, Vec<Endpoint>)>,
    next_port: u32,
}

/// The port the base uses when there is no translation.
const BASE_PORT: u32 = 1;

impl Side {
    fn new(ip: Ip, level: Option<Level>) -> Side {
        Side {
            ip,
            level,
            mappings: Vec::new(),
            next_port: 100,
        }
    }

    fn key(&self, dst: Endpoint) -> Option<Endpoint> {
        match self.level.filter(|l| l.translates).map(|l| l.mapping) {
            None | Some(Behavior::EndpointIndependent) => None,
            Some(Behavior::AddressDependent) => Some((dst.0, 0)),
            Some(Behavior::AddressAndPortDependent) => Some(dst),
        }
    }

    /// Send from the base to `dst`: the external source endpoint.
    fn send(&mut self, dst: Endpoint) -> Endpoint {
        let translates = self.level.is_some_and(|l| l.translates);
        let key = self.key(dst);
        let i = match self.mappings.iter().position(|m| m.0 == key) {
            Some(i) => i,
            None => {
                let port = if translates {
                    self.next_port += 1;
                    self.next_port
                } else {
                    BASE_PORT
                };
                self.mappings.push((key, port, Vec::new()));
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[i];
        if !m.2.contains(&dst) {
            m.2.push(dst);
        }
        (self.ip, m.1)
    }

    /// Does a packet from `src` to our external `port` get in?
    fn admit(&self, src: Endpoint, port: u32) -> bool {
        let Some(level) = self.level else {
            return port == BASE_PORT;
        };
        self.mappings.iter().any(|(_, p, sent)| {
            *p == port
                && match level.filtering {
                    Behavior::EndpointIndependent => true,
                    Behavior::AddressDependent => sent.iter().any(|s| s.0 == src.0),
                    Behavior::AddressAndPortDependent => sent.contains(&src),
                }
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Msg {
    Request,
    Response {
        /// Where the request this answers was sent.
        to: Endpoint,
    },
}

/// Replay ICE between a peer behind `a` and a peer behind `b` (each chain innermost first; an
/// empty chain is a public host).
pub fn direct(a: &[Level], b: &[Level]) -> Direct {
    let (ea, eb) = (effective(a), effective(b));
    if ea.is_some_and(|l| l.udp_blocked) || eb.is_some_and(|l| l.udp_blocked) {
        return Direct::UdpBlocked;
    }
    let mut sides = [Side::new(Ip::A, ea), Side::new(Ip::B, eb)];
    // Gathering: each side's server-reflexive address, as the STUN server sees it.
    let srflx = [
        sides[0].send((Ip::Stun, 3478)),
        sides[1].send((Ip::Stun, 3478)),
    ];
    // Per side: known remote candidates (endpoint, how learned), succeeded checks.
    let mut remotes: [Vec<(Endpoint, Remote)>; 2] = [
        vec![(srflx[1], Remote::Signalled)],
        vec![(srflx[0], Remote::Signalled)],
    ];
    let mut valid: [Option<Remote>; 2] = [None, None];
    let mut succeeded: [Vec<Endpoint>; 2] = [Vec::new(), Vec::new()];
    // Rounds of checks (ICE retransmits and re-checks until the check list settles): each
    // round, every side checks every remote candidate that has not succeeded yet.
    for _round in 0..6 {
        let mut queue: std::collections::VecDeque<(usize, Endpoint, Msg)> =
            std::collections::VecDeque::new();
        for s in 0..2 {
            for (e, _) in &remotes[s] {
                if !succeeded[s].contains(e) {
                    queue.push_back((s, *e, Msg::Request));
                }
            }
        }
        let mut steps = 0;
        while let Some((from, dst, msg)) = queue.pop_front() {
            steps += 1;
            if steps > 1000 {
                break;
            }
            let src = sides[from].send(dst);
            let to = 1 - from;
            if dst.0 != sides[to].ip || !sides[to].admit(src, dst.1) {
                continue;
            }
            match msg {
                Msg::Request => {
                    let known = remotes[to].iter().any(|(e, _)| *e == src);
                    if !known {
                        remotes[to].push((src, Remote::PeerReflexive));
                    }
                    queue.push_back((to, src, Msg::Response { to: dst }));
                    // A triggered check (§7.3.1.4) unless that pair already succeeded.
                    if !succeeded[to].contains(&src) {
                        queue.push_back((to, src, Msg::Request));
                    }
                }
                Msg::Response { to: asked } => {
                    // §7.2.5.2.1: the response must come from where the request went.
                    if src == asked && !succeeded[to].contains(&src) {
                        succeeded[to].push(src);
                        let kind = remotes[to]
                            .iter()
                            .find(|(e, _)| *e == src)
                            .map_or(Remote::PeerReflexive, |(_, k)| *k);
                        // A signalled candidate outranks a peer-reflexive one in the report.
                        valid[to] = Some(match valid[to] {
                            Some(Remote::Signalled) => Remote::Signalled,
                            _ => kind,
                        });
                    }
                }
            }
        }
    }
    match valid {
        [Some(x), Some(y)] => Direct::Connects(x, y),
        _ => Direct::Impossible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Behavior::{
        AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
    };

    fn n(m: Behavior, f: Behavior) -> Vec<Level> {
        vec![Level::nat(m, f)]
    }

    #[test]
    fn legacy_table() {
        let full = n(Ei, Ei);
        let restricted = n(Ei, Ad);
        let port_restricted = n(Ei, Apd);
        let symmetric = n(Apd, Apd);
        use Direct::*;
        use Remote::*;
        assert_eq!(direct(&[], &[]), Connects(Signalled, Signalled));
        assert_eq!(direct(&full, &full), Connects(Signalled, Signalled));
        assert_eq!(
            direct(&port_restricted, &port_restricted),
            Connects(Signalled, Signalled)
        );
        // The symmetric side's checks arrive from a port nobody signalled.
        assert_eq!(
            direct(&full, &symmetric),
            Connects(PeerReflexive, Signalled)
        );
        assert_eq!(
            direct(&restricted, &symmetric),
            Connects(PeerReflexive, Signalled)
        );
        assert_eq!(direct(&port_restricted, &symmetric), Impossible);
        assert_eq!(direct(&symmetric, &symmetric), Impossible);
    }

    #[test]
    fn address_dependent_mapping_meets_open_filtering() {
        // ADM on both sides: works when one side lets the first check in and the other lets
        // the reply-direction checks in.
        assert!(matches!(
            direct(&n(Ad, Ei), &n(Ad, Ad)),
            Direct::Connects(..)
        ));
        assert_eq!(direct(&n(Ad, Apd), &n(Ad, Apd)), Direct::Impossible);
        // Both APDM: every new destination port is a new mapping, so responses never come
        // from where requests went.
        assert_eq!(direct(&n(Apd, Ei), &n(Apd, Ei)), Direct::Impossible);
    }

    #[test]
    fn chains_and_firewalls() {
        let fw = Level {
            mapping: Ei,
            filtering: Apd,
            translates: false,
            udp_blocked: false,
        };
        // A firewall in front of a full-cone NAT makes it port-restricted.
        let chain = vec![Level::nat(Ei, Ei), fw];
        assert_eq!(direct(&chain, &n(Apd, Apd)), Direct::Impossible);
        assert!(matches!(direct(&chain, &n(Ei, Apd)), Direct::Connects(..)));
        let blocked = Level {
            udp_blocked: true,
            ..fw
        };
        assert_eq!(direct(&[blocked], &[]), Direct::UdpBlocked);
    }

    #[test]
    fn symmetric_in_both_directions() {
        for m1 in Behavior::ALL {
            for f1 in Behavior::ALL {
                for m2 in Behavior::ALL {
                    for f2 in Behavior::ALL {
                        let ab = direct(&n(m1, f1), &n(m2, f2));
                        let ba = direct(&n(m2, f2), &n(m1, f1));
                        let swapped = match ba {
                            Direct::Connects(x, y) => Direct::Connects(y, x),
                            other => other,
                        };
                        assert_eq!(ab, swapped, "{m1:?}/{f1:?} vs {m2:?}/{f2:?}");
                    }
                }
            }
        }
    }
}
