#![allow(clippy::unwrap_used)]
//! The in-memory network: double NAT with a STUN-like echo server, hairpinning through two
//! levels, and deterministic impairments.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::{ip, sa};
use nat::net::{Clock, Delivery, HostId, Link, Net, NetError};
use nat::{NatConfig, Protocol};

/// internet (server 198.51.100.1 with alternate 198.51.100.2) <- CGN 203.0.113.1 <-
/// carrier 100.64.0.0/10 <- home NATs 100.64.0.2 / 100.64.0.3 <- alice / bob (both
/// 192.168.1.2 in their own home networks).
struct Lab {
    net: Net,
    server: HostId,
    alice: HostId,
    bob: HostId,
    cgn: nat::net::NatId,
    home1: nat::net::NatId,
}

fn lab(seed: u64) -> Lab {
    let mut net = Net::new(seed);
    let internet = net.add_network("internet");
    let carrier = net.add_network("carrier");
    let h1 = net.add_network("home1");
    let h2 = net.add_network("home2");
    let server = net
        .add_host("server", internet, ip("198.51.100.1"))
        .unwrap();
    net.add_address(server, ip("198.51.100.2")).unwrap();
    let cgn = net
        .add_nat(
            "cgn",
            NatConfig::preset("cgnat", vec![ip("203.0.113.1")]).unwrap(),
            carrier,
            internet,
        )
        .unwrap();
    let home1 = net
        .add_nat(
            "home1",
            NatConfig::preset("port-restricted-cone", vec![ip("100.64.0.2")]).unwrap(),
            h1,
            carrier,
        )
        .unwrap();
    net.add_nat(
        "home2",
        NatConfig::preset("port-restricted-cone", vec![ip("100.64.0.3")]).unwrap(),
        h2,
        carrier,
    )
    .unwrap();
    let alice = net.add_host("alice", h1, ip("192.168.1.2")).unwrap();
    let bob = net.add_host("bob", h2, ip("192.168.1.2")).unwrap();
    Lab {
        net,
        server,
        alice,
        bob,
        cgn,
        home1,
    }
}

/// Drive the network; the server answers every datagram with the source it saw (like a
/// STUN Binding response's XOR-MAPPED-ADDRESS). Returns deliveries to hosts other than the
/// server.
fn run(net: &mut Net, clock: &mut Clock, server: HostId) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut steps = 0;
    while let Some(d) = net.next_delivery(clock) {
        steps += 1;
        assert!(steps < 10_000, "network does not settle");
        if d.host == server {
            net.send_from(
                clock.now(),
                server,
                d.to,
                d.from,
                d.from.to_string().into_bytes(),
            )
            .unwrap();
        } else {
            out.push(d);
        }
    }
    out
}

fn srflx(
    net: &mut Net,
    clock: &mut Clock,
    lab_server: HostId,
    host: HostId,
    local: SocketAddrV4,
) -> SocketAddrV4 {
    net.send_from(
        clock.now(),
        host,
        local,
        sa("198.51.100.1:3478"),
        b"binding".to_vec(),
    )
    .unwrap();
    let got = run(net, clock, lab_server);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, host);
    assert_eq!(got[0].from, sa("198.51.100.1:3478"));
    String::from_utf8(got[0].payload.clone())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn double_nat_shows_the_outermost_mapping() {
    let mut l = lab(1);
    let mut clock = Clock::new();
    let local = sa("192.168.1.2:4000");
    let mapped = srflx(&mut l.net, &mut clock, l.server, l.alice, local);
    assert_eq!(*mapped.ip(), ip("203.0.113.1"));
    // The home NAT preserved the port; the CGN mapped 100.64.0.2:4000 to `mapped`.
    let home: Vec<_> = l.net.nat(l.home1).unwrap().mappings().collect();
    assert_eq!(home.len(), 1);
    assert_eq!(
        (home[0].internal, home[0].external),
        (local, sa("100.64.0.2:4000"))
    );
    let cgn: Vec<_> = l.net.nat(l.cgn).unwrap().mappings().collect();
    assert_eq!(cgn.len(), 1);
    assert_eq!(
        (cgn[0].internal, cgn[0].external, cgn[0].protocol),
        (sa("100.64.0.2:4000"), mapped, Protocol::Udp)
    );
    // EIM at both levels: the alternate address sees the same mapping (RFC 5780 test II).
    l.net
        .send_from(
            clock.now(),
            l.alice,
            local,
            sa("198.51.100.2:3479"),
            b"binding".to_vec(),
        )
        .unwrap();
    let got = run(&mut l.net, &mut clock, l.server);
    assert_eq!(
        String::from_utf8(got[0].payload.clone()).unwrap(),
        mapped.to_string()
    );
    // APDF at the CGN: the alternate address cannot reach a mapping that never sent to it.
    let bob_mapped = srflx(&mut l.net, &mut clock, l.server, l.bob, local);
    l.net
        .send_from(
            clock.now(),
            l.server,
            sa("198.51.100.2:3478"),
            bob_mapped,
            b"unsolicited".to_vec(),
        )
        .unwrap();
    assert!(run(&mut l.net, &mut clock, l.server).is_empty());
    assert_eq!(l.net.stats().dropped("filtered"), 1);
    assert_eq!(l.net.stats().sent, 7);
    assert_eq!(l.net.stats().delivered, 6);
    // Same local address in two home networks: `send` cannot tell them apart.
    assert_eq!(
        l.net
            .send(clock.now(), local, sa("198.51.100.1:3478"), vec![]),
        Err(NetError::AmbiguousSource(ip("192.168.1.2")))
    );
}

/// Hairpinning through two levels: alice and bob behind different home NATs behind the same
/// CGN reach each other on their CGN (server-reflexive) addresses, and see each other's
/// server-reflexive address as the source (RFC 4787 REQ-9 at the CGN).
#[test]
fn hairpin_through_two_levels() {
    let mut l = lab(2);
    let mut clock = Clock::new();
    let (la, lb) = (sa("192.168.1.2:4000"), sa("192.168.1.2:5000"));
    let a = srflx(&mut l.net, &mut clock, l.server, l.alice, la);
    let b = srflx(&mut l.net, &mut clock, l.server, l.bob, lb);
    assert_eq!(a.ip(), b.ip());
    // Bob punches first: the CGN's filtering (APDF) drops it, since alice's CGN mapping has
    // not sent to bob's address yet; but bob's home NAT and CGN mapping now expect alice.
    l.net
        .send_from(clock.now(), l.bob, lb, a, b"punch".to_vec())
        .unwrap();
    assert!(run(&mut l.net, &mut clock, l.server).is_empty());
    assert_eq!(l.net.stats().dropped("filtered"), 1);
    l.net
        .send_from(clock.now(), l.alice, la, b, b"hello bob".to_vec())
        .unwrap();
    let got = run(&mut l.net, &mut clock, l.server);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].host, got[0].to, got[0].from), (l.bob, lb, a));
    l.net
        .send_from(clock.now(), l.bob, lb, a, b"hello alice".to_vec())
        .unwrap();
    let got = run(&mut l.net, &mut clock, l.server);
    assert_eq!((got[0].host, got[0].to, got[0].from), (l.alice, la, b));
    assert_eq!(l.net.nat(l.cgn).unwrap().stats().hairpinned, 2);
}

#[test]
fn unroutable_destinations_are_dropped() {
    let mut l = lab(3);
    let mut clock = Clock::new();
    l.net
        .send_from(
            clock.now(),
            l.alice,
            sa("192.168.1.2:1"),
            sa("192.0.2.99:1"),
            vec![1],
        )
        .unwrap();
    assert!(run(&mut l.net, &mut clock, l.server).is_empty());
    assert_eq!(l.net.stats().dropped("no-route"), 1);
    assert_eq!(
        l.net
            .send(clock.now(), sa("10.9.9.9:1"), sa("192.0.2.99:1"), vec![]),
        Err(NetError::UnknownSource(ip("10.9.9.9")))
    );
}

/// A firewall box (no translation) between a public host and the Internet.
#[test]
fn firewall_box_filters_without_translating() {
    let mut net = Net::new(4);
    let internet = net.add_network("internet");
    let dmz = net.add_network("dmz");
    let server = net
        .add_host("server", internet, ip("198.51.100.1"))
        .unwrap();
    let h = net.add_host("h", dmz, ip("203.0.113.50")).unwrap();
    net.add_nat(
        "fw",
        NatConfig::preset("firewall", vec![]).unwrap(),
        dmz,
        internet,
    )
    .unwrap();
    let mut clock = Clock::new();
    net.send_from(
        clock.now(),
        h,
        sa("203.0.113.50:7"),
        sa("198.51.100.1:3478"),
        b"x".to_vec(),
    )
    .unwrap();
    let got = run(&mut net, &mut clock, server);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"203.0.113.50:7");
    net.send_from(
        clock.now(),
        server,
        sa("198.51.100.1:9"),
        sa("203.0.113.50:7"),
        b"x".to_vec(),
    )
    .unwrap();
    assert!(run(&mut net, &mut clock, server).is_empty());
    assert_eq!(net.stats().dropped("filtered"), 1);
}

fn impaired_trace(seed: u64) -> (Vec<(Duration, u32)>, nat::net::NetStats) {
    let mut l = lab(seed);
    let link = Link {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(8),
        loss: 0.1,
        reorder: 0.05,
    };
    l.net.set_host_link(l.alice, link).unwrap();
    l.net.set_nat_links(l.cgn, link, link).unwrap();
    let mut clock = Clock::new();
    let start = clock.now();
    let local = sa("192.168.1.2:4000");
    for i in 0..200u32 {
        l.net
            .send_from(
                clock.now(),
                l.alice,
                local,
                sa("198.51.100.1:3478"),
                i.to_be_bytes().to_vec(),
            )
            .unwrap();
        clock.advance(Duration::from_millis(1));
    }
    let mut trace = Vec::new();
    while let Some(d) = l.net.next_delivery(&mut clock) {
        assert_eq!(d.host, l.server);
        let seq = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
        trace.push((d.at - start, seq));
    }
    (trace, l.net.stats().clone())
}

/// Same seed, same trace; the impairments really happen (loss, delay bounds, reordering).
#[test]
fn impairments_are_seeded_and_deterministic() {
    let (a, sa_) = impaired_trace(7);
    let (b, sb) = impaired_trace(7);
    let (c, _) = impaired_trace(8);
    assert_eq!(a, b);
    assert_eq!(sa_, sb);
    assert_ne!(a, c);
    // Three impaired crossings (alice's link, CGN inside, CGN outside), 10% loss each.
    let delivered = a.len();
    assert!((100..190).contains(&delivered), "{delivered}");
    assert_eq!(sa_.dropped("loss") as usize, 200 - delivered);
    for (i, (at, seq)) in a.iter().enumerate() {
        let sent = Duration::from_millis(u64::from(*seq));
        let delay = *at - sent;
        assert!(delay >= Duration::from_millis(30), "#{i} {delay:?}");
        // Each crossing: 10 ms + up to 8 ms jitter, + up to 18 ms more when held back.
        assert!(delay <= Duration::from_millis(3 * 36), "#{i} {delay:?}");
    }
    let reordered = a.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert!(
        reordered > 0,
        "jitter and reordering must reorder some datagrams"
    );
}

/// A link delay too large for `Instant` arithmetic loses the datagram instead of panicking.
#[test]
fn huge_link_delay_drops_instead_of_panicking() {
    let mut net = Net::new(3);
    let lan = net.add_network("lan");
    let a = net.add_host("a", lan, ip("198.51.100.1")).unwrap();
    net.add_host("b", lan, ip("198.51.100.2")).unwrap();
    net.set_host_link(
        a,
        Link {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder: 1.0,
            ..Link::default()
        },
    )
    .unwrap();
    let mut clock = Clock::new();
    net.send(
        clock.now(),
        sa("198.51.100.1:1"),
        sa("198.51.100.2:2"),
        b"x".to_vec(),
    )
    .unwrap();
    assert_eq!(net.next_delivery(&mut clock), None);
    assert_eq!(net.stats().dropped("delay-overflow"), 1);
}
