#![allow(clippy::unwrap_used)]
//! Flow-level behaviour against the definitions of RFC 4787 and RFC 5382.

mod common;

use std::time::{Duration, Instant};

use common::{ip, sa};
use nat::{
    Behavior, DropReason, Mode, Nat, NatConfig, Pooling, PortAssignment, Protocol, TcpFlags,
};

const UDP: Protocol = Protocol::Udp;

fn cfg(mapping: Behavior, filtering: Behavior) -> NatConfig {
    NatConfig {
        mapping,
        filtering,
        external: vec![ip("203.0.113.1")],
        ..NatConfig::default()
    }
}

fn nat(c: NatConfig) -> Nat {
    Nat::new(c, 42).unwrap()
}

/// RFC 4787 §4.1: X:x sends to Y1:y1, Y1:y2 and Y2:y1; which of the three mappings are equal
/// decides the mapping behaviour.
#[test]
fn rfc4787_4_1_mapping_behaviours() {
    let now = Instant::now();
    let host = sa("192.168.1.2:5000");
    let (y1y1, y1y2, y2y1) = (
        sa("198.51.100.1:3478"),
        sa("198.51.100.1:3479"),
        sa("198.51.100.2:3478"),
    );
    for m in Behavior::ALL {
        let mut n = nat(cfg(m, Behavior::EndpointIndependent));
        let a = n.outbound(now, UDP, host, y1y1).unwrap().external;
        let b = n.outbound(now, UDP, host, y1y2).unwrap().external;
        let c = n.outbound(now, UDP, host, y2y1).unwrap().external;
        match m {
            // "reuses the port mapping for subsequent packets ... to any external IP address
            // and port"
            Behavior::EndpointIndependent => assert!(a == b && b == c, "{a} {b} {c}"),
            // "... to the same external IP address, regardless of the external port"
            Behavior::AddressDependent => assert!(a == b && b != c, "{a} {b} {c}"),
            // "... to the same external IP address and port": a new remote port gives a
            // new external port
            Behavior::AddressAndPortDependent => {
                assert!(a != b && b != c && a != c, "{a} {b} {c}")
            }
        }
        // Repeating a destination reuses its mapping.
        assert_eq!(n.outbound(now, UDP, host, y1y2).unwrap().external, b);
    }
}

/// RFC 4787 §5: after X:x sent to Y1:y1 only, which remote endpoints may send in.
#[test]
fn rfc4787_5_filtering_behaviours() {
    let now = Instant::now();
    let host = sa("192.168.1.2:5000");
    let y1y1 = sa("198.51.100.1:3478");
    let y1y2 = sa("198.51.100.1:3479");
    let y2y1 = sa("198.51.100.2:3478");
    for m in Behavior::ALL {
        for f in Behavior::ALL {
            let mut n = nat(cfg(m, f));
            let e = n.outbound(now, UDP, host, y1y1).unwrap().external;
            assert_eq!(
                n.inbound(now, UDP, y1y1, e),
                Ok(host),
                "{m:?} {f:?}: the sent-to endpoint"
            );
            let known_ip_new_port = n.inbound(now, UDP, y1y2, e);
            let new_ip = n.inbound(now, UDP, y2y1, e);
            match f {
                Behavior::EndpointIndependent => {
                    assert_eq!(known_ip_new_port, Ok(host));
                    assert_eq!(new_ip, Ok(host));
                }
                // ADF: a new remote port from a known IP passes, a new IP does not.
                Behavior::AddressDependent => {
                    assert_eq!(known_ip_new_port, Ok(host));
                    assert_eq!(new_ip, Err(DropReason::Filtered));
                }
                Behavior::AddressAndPortDependent => {
                    assert_eq!(known_ip_new_port, Err(DropReason::Filtered));
                    assert_eq!(new_ip, Err(DropReason::Filtered));
                }
            }
        }
    }
}

/// Filtering state is per mapping: with APDM, sending to Y1:y2 opens Y1:y2's own mapping,
/// not the one made for Y1:y1.
#[test]
fn filtering_state_belongs_to_the_mapping() {
    let now = Instant::now();
    let host = sa("192.168.1.2:5000");
    let mut n = nat(cfg(
        Behavior::AddressAndPortDependent,
        Behavior::AddressDependent,
    ));
    let e1 = n
        .outbound(now, UDP, host, sa("198.51.100.1:1"))
        .unwrap()
        .external;
    let e2 = n
        .outbound(now, UDP, host, sa("198.51.100.2:1"))
        .unwrap()
        .external;
    assert_eq!(n.inbound(now, UDP, sa("198.51.100.2:9"), e2), Ok(host));
    assert_eq!(
        n.inbound(now, UDP, sa("198.51.100.2:9"), e1),
        Err(DropReason::Filtered)
    );
    assert_eq!(
        n.inbound(now, UDP, sa("198.51.100.9:9"), sa("203.0.113.1:1")),
        Err(DropReason::NoMapping)
    );
    assert_eq!(
        n.inbound(now, UDP, sa("198.51.100.1:1"), sa("203.0.113.9:1")),
        Err(DropReason::NotForUs)
    );
    assert_eq!(n.stats().dropped(DropReason::Filtered), 1);
    assert_eq!(n.stats().dropped(DropReason::NoMapping), 1);
    assert_eq!(n.stats().dropped(DropReason::NotForUs), 1);
}

/// RFC 4787 §4.2.1 preservation, and REQ-3 (no port overloading): a fallback port when the
/// preserved one is taken.
#[test]
fn port_preservation_with_collision_fallback() {
    let now = Instant::now();
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ));
    let server = sa("198.51.100.1:3478");
    let a = n
        .outbound(now, UDP, sa("192.168.1.2:5000"), server)
        .unwrap()
        .external;
    let b = n
        .outbound(now, UDP, sa("192.168.1.3:5000"), server)
        .unwrap()
        .external;
    assert_eq!(a, sa("203.0.113.1:5000"));
    assert_ne!(b.port(), 5000);
    assert!(b.port() >= 1024);
    // A port outside the range cannot be preserved.
    let c = n
        .outbound(now, UDP, sa("192.168.1.4:53"), server)
        .unwrap()
        .external;
    assert!(c.port() >= 1024, "{c}");
    // TCP and UDP port spaces are separate.
    let t = n
        .outbound_tcp(now, sa("192.168.1.3:5000"), server, TcpFlags::SYN)
        .unwrap()
        .external;
    assert_eq!(t, sa("203.0.113.1:5000"));
}

/// RFC 4787 REQ-4: port parity preserved, with every assignment policy.
#[test]
fn port_parity_is_kept() {
    let now = Instant::now();
    for pa in [
        PortAssignment::Preserve,
        PortAssignment::Sequential,
        PortAssignment::Random,
    ] {
        let mut n = nat(NatConfig {
            port_assignment: pa,
            port_parity: true,
            port_range: (2000, 2099),
            mapping: Behavior::AddressAndPortDependent,
            ..cfg(Behavior::EndpointIndependent, Behavior::EndpointIndependent)
        });
        for i in 0..80u16 {
            let internal = sa(&format!("192.168.1.2:{}", 5000 + (i % 7)));
            let e = n
                .outbound(
                    now,
                    UDP,
                    internal,
                    sa(&format!("198.51.100.1:{}", 1000 + i)),
                )
                .unwrap()
                .external;
            assert_eq!(
                e.port() % 2,
                internal.port() % 2,
                "{pa:?} {internal} -> {e}"
            );
            assert!((2000..=2099).contains(&e.port()));
        }
    }
}

/// Sequential assignment hands out consecutive ports and reports exhaustion.
#[test]
fn sequential_assignment_and_exhaustion() {
    let now = Instant::now();
    let mut n = nat(NatConfig {
        port_assignment: PortAssignment::Sequential,
        port_range: (20000, 20002),
        ..cfg(Behavior::EndpointIndependent, Behavior::EndpointIndependent)
    });
    let server = sa("198.51.100.1:3478");
    let ports: Vec<u16> = (0..3)
        .map(|i| {
            n.outbound(now, UDP, sa(&format!("192.168.1.{}:4000", 2 + i)), server)
                .unwrap()
                .external
                .port()
        })
        .collect();
    assert_eq!(ports, vec![20000, 20001, 20002]);
    assert_eq!(
        n.outbound(now, UDP, sa("192.168.1.9:4000"), server),
        Err(DropReason::PortsExhausted)
    );
    assert_eq!(n.stats().dropped(DropReason::PortsExhausted), 1);
}

/// Random assignment stays inside the range and uses all of it before giving up.
#[test]
fn random_assignment_respects_range() {
    let now = Instant::now();
    let mut n = nat(NatConfig {
        port_assignment: PortAssignment::Random,
        port_range: (40000, 40009),
        ..cfg(
            Behavior::AddressAndPortDependent,
            Behavior::EndpointIndependent,
        )
    });
    let host = sa("192.168.1.2:40000");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        let e = n
            .outbound(now, UDP, host, sa(&format!("198.51.100.1:{}", 100 + i)))
            .unwrap()
            .external;
        assert!((40000..=40009).contains(&e.port()));
        seen.insert(e.port());
    }
    assert_eq!(seen.len(), 10);
    assert_eq!(
        n.outbound(now, UDP, host, sa("198.51.100.1:99")),
        Err(DropReason::PortsExhausted)
    );
    // Same seed, same choices.
    let mut again = nat(n.config().clone());
    let first = again
        .outbound(now, UDP, host, sa("198.51.100.1:100"))
        .unwrap()
        .external;
    assert_eq!(
        Some(&first.port()),
        n.mappings().next().map(|m| m.external.port()).as_ref()
    );
}

/// RFC 4787 REQ-2: paired pooling keeps one external IP per internal IP; arbitrary does not.
#[test]
fn pooling_paired_versus_arbitrary() {
    let now = Instant::now();
    let ext = vec![ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3")];
    for pooling in [Pooling::Paired, Pooling::Arbitrary] {
        let mut n = nat(NatConfig {
            pooling,
            external: ext.clone(),
            ..cfg(
                Behavior::AddressAndPortDependent,
                Behavior::EndpointIndependent,
            )
        });
        let mut ips = std::collections::BTreeSet::new();
        for i in 0..40 {
            let e = n
                .outbound(
                    now,
                    UDP,
                    sa("192.168.1.2:5000"),
                    sa(&format!("198.51.100.1:{}", 100 + i)),
                )
                .unwrap()
                .external;
            ips.insert(*e.ip());
        }
        match pooling {
            Pooling::Paired => assert_eq!(ips.len(), 1),
            Pooling::Arbitrary => assert_eq!(ips.len(), 3, "40 random picks over 3 addresses"),
        }
    }
}

/// RFC 4787 REQ-5/REQ-6: the timer, outbound refresh, and inbound refresh on and off.
#[test]
fn rfc4787_req5_req6_timeouts_and_refresh() {
    let t0 = Instant::now();
    let s = |secs| t0 + Duration::from_secs(secs);
    let host = sa("192.168.1.2:5000");
    let server = sa("198.51.100.1:3478");
    for refresh in [false, true] {
        let mut n = nat(NatConfig {
            udp_timeout: Duration::from_secs(30),
            inbound_refresh: refresh,
            ..cfg(
                Behavior::EndpointIndependent,
                Behavior::AddressAndPortDependent,
            )
        });
        let e = n.outbound(t0, UDP, host, server).unwrap().external;
        assert_eq!(n.poll_timeout(), Some(s(30)));
        assert_eq!(n.inbound(s(20), UDP, server, e), Ok(host));
        if refresh {
            assert_eq!(n.poll_timeout(), Some(s(50)));
            assert_eq!(n.inbound(s(45), UDP, server, e), Ok(host));
            assert_eq!(n.inbound(s(76), UDP, server, e), Err(DropReason::Expired));
        } else {
            assert_eq!(n.poll_timeout(), Some(s(30)));
            assert_eq!(n.inbound(s(31), UDP, server, e), Err(DropReason::Expired));
        }
        assert_eq!(n.mapping_count(), 0);
        // Outbound always refreshes.
        let e = n.outbound(s(100), UDP, host, server).unwrap().external;
        n.outbound(s(125), UDP, host, server).unwrap();
        assert_eq!(n.inbound(s(150), UDP, server, e), Ok(host));
        // handle_timeout removes it at its time, not before.
        let deadline = n.poll_timeout().unwrap();
        n.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(n.mapping_count(), 1);
        n.handle_timeout(deadline);
        assert_eq!(n.mapping_count(), 0);
        assert_eq!(
            n.inbound(deadline, UDP, server, e),
            Err(DropReason::NoMapping)
        );
        assert_eq!(n.stats().mappings_expired, 2);
        assert_eq!(n.poll_timeout(), None);
    }
}

fn hairpin_setup(hairpinning: bool, filtering: Behavior) -> (Nat, [std::net::SocketAddrV4; 4]) {
    let now = Instant::now();
    let mut n = nat(NatConfig {
        hairpinning,
        ..cfg(Behavior::EndpointIndependent, filtering)
    });
    let (a, b) = (sa("192.168.1.2:5000"), sa("192.168.1.3:6000"));
    let server = sa("198.51.100.1:3478");
    let ea = n.outbound(now, UDP, a, server).unwrap().external;
    let eb = n.outbound(now, UDP, b, server).unwrap().external;
    (n, [a, b, ea, eb])
}

/// RFC 4787 REQ-9 and §6: a hairpinned packet carries the sender's external endpoint and is
/// filtered by the target mapping as if it came from outside.
#[test]
fn rfc4787_req9_hairpinning_both_ways() {
    let now = Instant::now();
    let (mut n, [a, b, ea, eb]) = hairpin_setup(true, Behavior::AddressAndPortDependent);
    // A's mapping has not sent to EB yet: B's packet is filtered (but opens B's mapping
    // towards EA).
    assert_eq!(n.outbound(now, UDP, b, ea), Err(DropReason::Filtered));
    let out = n.outbound(now, UDP, a, eb).unwrap();
    assert_eq!(
        out.external, ea,
        "source is A's external endpoint, not its internal one"
    );
    assert_eq!(out.hairpin_to, Some(b));
    let back = n.outbound(now, UDP, b, ea).unwrap();
    assert_eq!(
        back,
        nat::Outbound {
            external: eb,
            hairpin_to: Some(a)
        }
    );
    assert_eq!(n.stats().hairpinned, 2);

    // Endpoint-independent filtering lets the first hairpinned packet through.
    let (mut n, [a, b, ea, eb]) = hairpin_setup(true, Behavior::EndpointIndependent);
    assert_eq!(n.outbound(now, UDP, b, ea).unwrap().hairpin_to, Some(a));
    // No mapping behind the target external endpoint.
    assert_eq!(
        n.outbound(now, UDP, a, sa("203.0.113.1:7")),
        Err(DropReason::NoMapping)
    );
    let _ = eb;

    let (mut n, [a, _b, _ea, eb]) = hairpin_setup(false, Behavior::EndpointIndependent);
    assert_eq!(
        n.outbound(now, UDP, a, eb),
        Err(DropReason::HairpinDisabled)
    );
    assert_eq!(n.stats().dropped(DropReason::HairpinDisabled), 1);
}

/// RFC 5382: TCP uses the same mapping and filtering behaviours; the state machine picks the
/// established or transitory timeout (REQ-5).
#[test]
fn rfc5382_tcp_state_and_timeouts() {
    let t0 = Instant::now();
    let m = |mins: u64| t0 + Duration::from_secs(60 * mins);
    let host = sa("192.168.1.2:40000");
    let server = sa("198.51.100.1:443");
    let mut n = nat(NatConfig {
        inbound_refresh: false,
        ..cfg(
            Behavior::EndpointIndependent,
            Behavior::AddressAndPortDependent,
        )
    });
    let e = n
        .outbound_tcp(t0, host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    // Partially open: transitory (4 min).
    assert_eq!(n.poll_timeout(), Some(m(4)));
    assert_eq!(
        n.inbound_tcp(t0, server, e, TcpFlags::SYN | TcpFlags::ACK),
        Ok(host)
    );
    // SYN seen both ways: established (2 h 4 min) from the last outbound refresh.
    assert_eq!(n.poll_timeout(), Some(m(124)));
    n.outbound_tcp(m(1), host, server, TcpFlags::ACK).unwrap();
    assert_eq!(n.inbound_tcp(m(60), server, e, TcpFlags::ACK), Ok(host));
    // Unsolicited SYN from elsewhere: dropped by APDF (RFC 5382 REQ-4 allows a silent drop).
    assert_eq!(
        n.inbound_tcp(m(60), sa("198.51.100.9:443"), e, TcpFlags::SYN),
        Err(DropReason::Filtered)
    );
    // One FIN is a half-close: the other direction may still carry data for hours, so the
    // established timeout stays (RFC 7857 §2.2, RFC 6146 §3.5.2.2).
    n.outbound_tcp(m(61), host, server, TcpFlags::FIN | TcpFlags::ACK)
        .unwrap();
    assert_eq!(n.poll_timeout(), Some(m(61 + 124)));
    // The peer's FIN too: closing, transitory from the last refresh (the outbound FIN;
    // inbound packets do not refresh here).
    assert_eq!(
        n.inbound_tcp(m(62), server, e, TcpFlags::FIN | TcpFlags::ACK),
        Ok(host)
    );
    assert_eq!(n.poll_timeout(), Some(m(65)));
    assert_eq!(
        n.inbound_tcp(m(66), server, e, TcpFlags::ACK),
        Err(DropReason::Expired)
    );

    // A SYN nobody answers times out after the transitory timeout.
    let e = n
        .outbound_tcp(m(100), host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    assert_eq!(
        n.inbound_tcp(
            m(104) + Duration::from_secs(1),
            server,
            e,
            TcpFlags::SYN | TcpFlags::ACK
        ),
        Err(DropReason::Expired)
    );
    // RST ends an established connection into the transitory timeout.
    let e = n
        .outbound_tcp(m(200), host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    n.inbound_tcp(m(200), server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    n.inbound_tcp(m(201), server, e, TcpFlags::RST).unwrap();
    assert_eq!(n.poll_timeout(), Some(m(204)));
    // An outbound RST never creates a mapping.
    assert_eq!(
        n.outbound_tcp(m(300), sa("192.168.1.5:1"), server, TcpFlags::RST),
        Err(DropReason::NoMapping)
    );
}

/// RFC 7857 §2.2 / RFC 6146 §3.5.2.2: a half-closed connection (FIN in one direction only)
/// keeps the established timeout; FINs in both directions or an RST make it transitory.
#[test]
fn rfc7857_2_2_half_close_keeps_established_timeout() {
    let t0 = Instant::now();
    let m = |mins: u64| t0 + Duration::from_secs(60 * mins);
    let host = sa("192.168.1.2:40000");
    let server = sa("198.51.100.1:443");
    for first_fin_out in [true, false] {
        let mut n = nat(cfg(
            Behavior::EndpointIndependent,
            Behavior::AddressAndPortDependent,
        ));
        let e = n
            .outbound_tcp(t0, host, server, TcpFlags::SYN)
            .unwrap()
            .external;
        n.inbound_tcp(t0, server, e, TcpFlags::SYN | TcpFlags::ACK)
            .unwrap();
        let fin = TcpFlags::FIN | TcpFlags::ACK;
        let fin_out = |n: &mut Nat, t| n.outbound_tcp(t, host, server, fin).map(|_| ());
        let fin_in = |n: &mut Nat, t| n.inbound_tcp(t, server, e, fin).map(|_| ());
        if first_fin_out {
            fin_out(&mut n, m(1)).unwrap();
        } else {
            fin_in(&mut n, m(1)).unwrap();
        }
        assert_eq!(n.poll_timeout(), Some(m(1 + 124)), "half-closed");
        // The open direction still carries data an hour later, and its mapping is there.
        assert_eq!(n.inbound_tcp(m(61), server, e, TcpFlags::ACK), Ok(host));
        assert_eq!(n.poll_timeout(), Some(m(61 + 124)));
        // A second FIN in the same direction (a retransmission) changes nothing.
        if first_fin_out {
            fin_out(&mut n, m(62)).unwrap();
        } else {
            fin_in(&mut n, m(62)).unwrap();
        }
        assert_eq!(n.poll_timeout(), Some(m(62 + 124)), "retransmitted FIN");
        // The other direction's FIN closes it: transitory.
        if first_fin_out {
            fin_in(&mut n, m(63)).unwrap();
        } else {
            fin_out(&mut n, m(63)).unwrap();
        }
        assert_eq!(n.poll_timeout(), Some(m(63 + 4)), "closed both ways");
    }
    // An RST alone is enough.
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::AddressAndPortDependent,
    ));
    let e = n
        .outbound_tcp(t0, host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    n.inbound_tcp(t0, server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    n.outbound_tcp(m(1), host, server, TcpFlags::RST).unwrap();
    assert_eq!(n.poll_timeout(), Some(m(5)));
}

/// RFC 5382 REQ-5 / RFC 6146 §3.5.2.2: a new connection on a 4-tuple whose previous
/// connection closed (a SYN without ACK on a closing session) starts a fresh TCP state, so it
/// gets the established timeout once its handshake completes, not the transitory one left over
/// from the old connection's FINs.
#[test]
fn rfc5382_req5_reused_four_tuple_gets_established_timeout() {
    let t0 = Instant::now();
    let host = sa("192.168.1.2:40000");
    let server = sa("198.51.100.1:443");
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::AddressAndPortDependent,
    ));
    let e = n
        .outbound_tcp(t0, host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    n.inbound_tcp(t0, server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    n.outbound_tcp(t0, host, server, TcpFlags::FIN | TcpFlags::ACK)
        .unwrap();
    n.inbound_tcp(t0, server, e, TcpFlags::FIN | TcpFlags::ACK)
        .unwrap();
    // Both FINs: transitory.
    assert_eq!(n.poll_timeout(), Some(t0 + Duration::from_secs(4 * 60)));
    // A minute later the host reuses the same 4-tuple for a new connection.
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(
        n.outbound_tcp(t1, host, server, TcpFlags::SYN)
            .unwrap()
            .external,
        e
    );
    // Partially open: transitory from the new SYN.
    assert_eq!(n.poll_timeout(), Some(t1 + Duration::from_secs(4 * 60)));
    n.inbound_tcp(t1, server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    n.outbound_tcp(t1, host, server, TcpFlags::ACK).unwrap();
    // Established again: 2 h 4 min.
    assert_eq!(n.poll_timeout(), Some(t1 + Duration::from_secs(124 * 60)));
    // A retransmitted SYN-ACK or a stray SYN with ACK does not reset anything.
    n.inbound_tcp(t1, server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    assert_eq!(n.poll_timeout(), Some(t1 + Duration::from_secs(124 * 60)));

    // The same from the outside: after an RST, an inbound SYN (no ACK) on the closed
    // session starts over too (simultaneous open or a peer reconnecting through EIF).
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ));
    let e = n
        .outbound_tcp(t0, host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    n.inbound_tcp(t0, server, e, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    n.inbound_tcp(t0, server, e, TcpFlags::RST).unwrap();
    assert_eq!(n.poll_timeout(), Some(t0 + Duration::from_secs(4 * 60)));
    n.inbound_tcp(t1, server, e, TcpFlags::SYN).unwrap();
    n.outbound_tcp(t1, host, server, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    assert_eq!(n.poll_timeout(), Some(t1 + Duration::from_secs(124 * 60)));
}

/// RFC 5382 REQ-1/REQ-3 + REQ-4: with endpoint-independent filtering an inbound SYN to a
/// live mapping passes (inbound connection to a listening host, as for TCP hole punching).
#[test]
fn rfc5382_inbound_syn_with_eif() {
    let t0 = Instant::now();
    let host = sa("192.168.1.2:40000");
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ));
    let e = n
        .outbound_tcp(t0, host, sa("198.51.100.1:3478"), TcpFlags::SYN)
        .unwrap()
        .external;
    let peer = sa("198.51.100.7:5555");
    assert_eq!(n.inbound_tcp(t0, peer, e, TcpFlags::SYN), Ok(host));
    // The inbound SYN opened a session but granted no APDF-style permission: the mapping's
    // permitted list holds only what it sent to.
    let info = n.mappings().next().unwrap();
    assert_eq!(info.permitted, vec![sa("198.51.100.1:3478")]);
    n.outbound_tcp(t0, host, peer, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    // Both SYNs seen: this session is established.
    assert_eq!(n.poll_timeout(), Some(t0 + Duration::from_secs(124 * 60)));
}

/// RFC 4787 REQ-6 (applied to TCP by RFC 5382): with `inbound_refresh` off, inbound packets
/// never keep a mapping alive, unsolicited SYNs that endpoint-independent filtering lets
/// through included.
#[test]
fn rfc4787_req6_inbound_syns_do_not_refresh_when_inbound_refresh_is_off() {
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let host = sa("192.168.1.2:40000");
    let mut n = nat(NatConfig {
        inbound_refresh: false,
        ..cfg(Behavior::EndpointIndependent, Behavior::EndpointIndependent)
    });
    let e = n
        .outbound_tcp(t0, host, sa("198.51.100.1:443"), TcpFlags::SYN)
        .unwrap()
        .external;
    assert_eq!(n.poll_timeout(), Some(s(240)));
    for (i, t) in [200u64, 210, 230, 239].into_iter().enumerate() {
        let peer = std::net::SocketAddrV4::new(ip("198.51.100.9"), 1000 + i as u16);
        assert_eq!(n.inbound_tcp(s(t), peer, e, TcpFlags::SYN), Ok(host));
        // The same peer again: its session does not grow past the mapping either.
        assert_eq!(n.inbound_tcp(s(t), peer, e, TcpFlags::SYN), Ok(host));
        assert_eq!(n.poll_timeout(), Some(s(240)), "SYN at +{t}s");
    }
    assert_eq!(
        n.inbound_tcp(s(241), sa("198.51.100.9:2000"), e, TcpFlags::SYN),
        Err(DropReason::Expired)
    );

    // An inbound connection the host accepts is refreshed by the host's own SYN-ACK.
    let e = n
        .outbound_tcp(s(300), host, sa("198.51.100.1:443"), TcpFlags::SYN)
        .unwrap()
        .external;
    let peer = sa("198.51.100.7:5555");
    assert_eq!(n.inbound_tcp(s(310), peer, e, TcpFlags::SYN), Ok(host));
    n.outbound_tcp(s(320), host, peer, TcpFlags::SYN | TcpFlags::ACK)
        .unwrap();
    assert_eq!(n.poll_timeout(), Some(s(320 + 124 * 60)));
}

/// Bounded session state must not let strangers push out real sessions: when a mapping holds
/// `MAX_SESSIONS_PER_MAPPING` sessions, sessions opened by unsolicited inbound SYNs (which
/// carry no filtering permission, RFC 4787 §5) are evicted before ones the host sent to.
#[test]
fn inbound_syn_spray_cannot_evict_sessions_the_host_opened() {
    let t0 = Instant::now();
    let host = sa("192.168.1.2:40000");
    let server = sa("198.51.100.1:443");
    let mut n = nat(cfg(
        Behavior::EndpointIndependent,
        Behavior::EndpointIndependent,
    ));
    // Waiting for the server's SYN-ACK: transitory, so it expires before the spray's SYNs.
    let e = n
        .outbound_tcp(t0, host, server, TcpFlags::SYN)
        .unwrap()
        .external;
    let t1 = t0 + Duration::from_secs(10);
    for i in 0..nat::MAX_SESSIONS_PER_MAPPING as u32 + 5 {
        let o = i.to_be_bytes();
        let peer = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, o[2], o[3]), 1000);
        assert_eq!(n.inbound_tcp(t1, peer, e, TcpFlags::SYN), Ok(host));
    }
    assert_eq!(n.stats().sessions_evicted, 6);
    let info = n.mappings().next().unwrap();
    assert_eq!(
        info.permitted,
        vec![server],
        "the host's own session survived"
    );
    // And it still completes its handshake into an established connection.
    let t2 = t0 + Duration::from_secs(20);
    assert_eq!(
        n.inbound_tcp(t2, server, e, TcpFlags::SYN | TcpFlags::ACK),
        Ok(host)
    );
    assert_eq!(n.poll_timeout(), Some(t2 + Duration::from_secs(124 * 60)));
}

#[test]
fn firewall_mode_filters_without_translating() {
    let now = Instant::now();
    let mut n = nat(NatConfig::preset("firewall", vec![]).unwrap());
    let host = sa("203.0.113.50:5000");
    let server = sa("198.51.100.1:3478");
    let out = n.outbound(now, UDP, host, server).unwrap();
    assert_eq!(out.external, host);
    assert_eq!(n.inbound(now, UDP, server, host), Ok(host));
    assert_eq!(
        n.inbound(now, UDP, sa("198.51.100.1:1"), host),
        Err(DropReason::Filtered)
    );
    assert_eq!(
        n.inbound(now, UDP, server, sa("203.0.113.51:5000")),
        Err(DropReason::NoMapping)
    );
    // Same timeouts as a NAT.
    let later = now + Duration::from_secs(121);
    assert_eq!(
        n.inbound(later, UDP, server, host),
        Err(DropReason::Expired)
    );
}

#[test]
fn udp_blocked_drops_udp_and_passes_tcp_and_icmp() {
    let now = Instant::now();
    let mut n = nat(NatConfig::preset("udp-blocked", vec![]).unwrap());
    assert_eq!(n.config().mode, Mode::UdpBlocked);
    let host = sa("203.0.113.50:5000");
    let server = sa("198.51.100.1:3478");
    assert_eq!(
        n.outbound(now, UDP, host, server),
        Err(DropReason::UdpBlocked)
    );
    assert_eq!(
        n.inbound(now, UDP, server, host),
        Err(DropReason::UdpBlocked)
    );
    let t = n.outbound_tcp(now, host, server, TcpFlags::SYN).unwrap();
    assert_eq!(t.external, host);
    assert_eq!(
        n.inbound_tcp(now, server, host, TcpFlags::SYN | TcpFlags::ACK),
        Ok(host)
    );
    let ping = sa("203.0.113.50:77");
    assert_eq!(
        n.outbound(now, Protocol::Icmp, ping, sa("198.51.100.1:0"))
            .unwrap()
            .external,
        ping
    );
    assert_eq!(n.stats().dropped(DropReason::UdpBlocked), 2);
}

/// Bounded memory: `max_mappings`, with expired mappings making room.
#[test]
fn table_full_until_mappings_expire() {
    let now = Instant::now();
    let mut n = nat(NatConfig {
        max_mappings: 2,
        udp_timeout: Duration::from_secs(10),
        ..cfg(
            Behavior::AddressAndPortDependent,
            Behavior::EndpointIndependent,
        )
    });
    let host = sa("192.168.1.2:5000");
    n.outbound(now, UDP, host, sa("198.51.100.1:1")).unwrap();
    n.outbound(now, UDP, host, sa("198.51.100.1:2")).unwrap();
    assert_eq!(
        n.outbound(now, UDP, host, sa("198.51.100.1:3")),
        Err(DropReason::TableFull)
    );
    // Existing mappings still work.
    n.outbound(now, UDP, host, sa("198.51.100.1:2")).unwrap();
    let later = now + Duration::from_secs(10);
    n.outbound(later, UDP, host, sa("198.51.100.1:3")).unwrap();
    assert_eq!(n.mapping_count(), 1);
    assert_eq!(n.stats().dropped(DropReason::TableFull), 1);
    assert_eq!(n.stats().mappings_created, 3);
}

/// A timeout too large for `Instant` arithmetic is refused up front, not met as a panic on
/// the first packet.
#[test]
fn nat_new_refuses_unbounded_timeouts() {
    let mut c = cfg(Behavior::EndpointIndependent, Behavior::EndpointIndependent);
    c.udp_timeout = Duration::MAX;
    assert_eq!(
        Nat::new(c, 1).unwrap_err(),
        nat::ConfigError::TimeoutTooLong("udp_timeout")
    );
}

#[test]
fn drop_reasons_have_distinct_names() {
    let names: std::collections::BTreeSet<&str> =
        DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), DropReason::COUNT);
}

/// The simulator's fabric keeps NATs behind `Box<dyn Translator + Send>`.
#[test]
fn nat_and_net_are_send() {
    fn send<T: Send>() {}
    send::<Nat>();
    send::<nat::net::Net>();
}
