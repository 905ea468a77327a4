//! Hostile datagrams never panic the agent: random bytes, and real STUN messages (a check, a
//! response) with bytes flipped, fed to an agent in every phase.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ice::{Agent, Config, IceState, Via};
use proptest::prelude::*;

/// Two agents connected back to back; returns them and a sample of their traffic.
fn connected_pair() -> (Agent, Agent, Vec<Vec<u8>>, Instant) {
    let mut now = Instant::now();
    let mut a = Agent::new(Config {
        seed: 1,
        ..Config::default()
    })
    .unwrap();
    let mut b = Agent::new(Config {
        controlling: false,
        seed: 2,
        ..Config::default()
    })
    .unwrap();
    a.add_host(now, "192.0.2.1:5000".parse().unwrap()).unwrap();
    b.add_host(now, "192.0.2.2:5000".parse().unwrap()).unwrap();
    let (ca, cb) = (a.local_credentials().clone(), b.local_credentials().clone());
    a.set_remote_credentials(now, &cb.ufrag, &cb.pwd).unwrap();
    b.set_remote_credentials(now, &ca.ufrag, &ca.pwd).unwrap();
    for c in b.local_candidates() {
        a.add_remote_candidate(now, c).unwrap();
    }
    for c in a.local_candidates() {
        b.add_remote_candidate(now, c).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..50 {
        for _ in 0..3 {
            while let Some(t) = a.poll_transmit() {
                let Via::Host(src) = t.via else { continue };
                seen.push(t.payload.clone());
                b.handle_packet(now, t.destination, src, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                let Via::Host(src) = t.via else { continue };
                seen.push(t.payload.clone());
                a.handle_packet(now, t.destination, src, &t.payload);
            }
        }
        if a.state().is_connected() && b.state().is_connected() {
            break;
        }
        now += Duration::from_millis(10);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert!(a.state().is_connected());
    (a, b, seen, now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_datagrams_never_panic(
        dgrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
        fresh in any::<bool>(),
    ) {
        let (mut a, _b, _, now) = connected_pair();
        if fresh {
            a = Agent::new(Config::default()).unwrap();
            a.add_host(now, "192.0.2.1:5000".parse().unwrap()).unwrap();
        }
        let local: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let from: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        for d in dgrams {
            a.handle_packet(now, local, from, &d);
            a.handle_turn_input(now, 0, &d);
            while a.poll_transmit().is_some() {}
            while a.poll_event().is_some() {}
        }
        a.handle_timeout(now + Duration::from_secs(1));
    }

    #[test]
    fn mutated_real_messages_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut a, mut b, seen, now) = connected_pair();
        let mut m = seen[pick.index(seen.len())].clone();
        for (at, x) in flips {
            let i = at.index(m.len());
            m[i] ^= x;
        }
        m.truncate(cut.index(m.len() + 1));
        let la: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let lb: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        a.handle_packet(now, la, lb, &m);
        b.handle_packet(now, lb, la, &m);
        while a.poll_transmit().is_some() {}
        while b.poll_transmit().is_some() {}
        // Garbage must not tear down a working connection.
        prop_assert!(a.state().is_connected() || a.state() == IceState::Completed);
    }
}
