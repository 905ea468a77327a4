//! Deterministic ICE tests over the in-memory network of the `nat` crate, under a virtual
//! clock: two agents behind RFC 4787 NATs, a STUN server (the `turn::binding::Responder`
//! core) on a public host, signaling with a fixed one-way delay. Every run is reproducible
//! from its seed; assertions compare the chosen path with an oracle and exact counters.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use ice::{CandidateKind, FailReason, IceState, Nomination, Policy};

/// RFC 4787 presets (plus "none": a host on the public network) and the path the oracle
/// expects between them.
const KINDS: [&str; 5] = [
    "none",
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "symmetric",
];

/// The oracle, written from RFC 4787's definitions rather than from the agent:
/// - a symmetric NAT (address-and-port-dependent mapping) shows the peer a port the peer never
///   learnt from signaling, so the path is peer-reflexive, and it only works when the other
///   side's filtering does not depend on the port (EIF or ADF) or there is no NAT at all;
/// - two symmetric NATs, or symmetric against port-restricted filtering, need a relay;
/// - endpoint-independent mappings make the signalled server-reflexive address work (the
///   first check opens the way for the second);
/// - no NAT on either side: host to host.
fn oracle(a: &str, b: &str) -> Option<Path> {
    let sym = |x: &str| x == "symmetric";
    let port_filter = |x: &str| x == "port-restricted-cone" || x == "symmetric";
    if a == "none" && b == "none" {
        return Some(Path::Direct);
    }
    if (sym(a) && port_filter(b)) || (sym(b) && port_filter(a)) {
        return None; // needs TURN
    }
    if sym(a) || sym(b) {
        return Some(Path::PeerReflexive);
    }
    Some(Path::ServerReflexive)
}

#[test]
fn rfc4787_grid_matches_the_oracle_trickle_and_vanilla() {
    for (i, a) in KINDS.iter().enumerate() {
        for b in KINDS.iter() {
            for trickle in [true, false] {
                let seed = 1000 + i as u64;
                let mut w = World::new(
                    seed,
                    a,
                    b,
                    Opts {
                        trickle,
                        ..Opts::default()
                    },
                );
                let out = w.run(Duration::from_secs(40));
                let want = oracle(a, b);
                let ctx = format!("{a} vs {b} trickle={trickle}: {out:?}");
                match want {
                    Some(p) => {
                        assert!(out.connected, "{ctx}");
                        assert_eq!(out.path_a, Some(p), "{ctx}");
                        assert_eq!(out.path_b, Some(p), "{ctx}");
                        assert!(out.data_ok, "{ctx}");
                    }
                    None => {
                        assert!(!out.connected, "{ctx}");
                        assert_eq!(out.fail_a, Some(FailReason::NoValidPair), "{ctx}");
                    }
                }
            }
        }
    }
}

#[test]
fn public_hosts_connect_with_exact_counters() {
    let mut w = World::new(7, "none", "none", Opts::default());
    let out = w.run(Duration::from_secs(10));
    assert!(out.connected, "{out:?}");
    assert_eq!(out.path_a, Some(Path::Direct));
    let (a, b) = (w.a.agent.stats(), w.b.agent.stats());
    // One pair each side. A (controlling): its ordinary check, then the nominating check.
    // B: one triggered check (answering A's) and nothing else: its own pair was already
    // in progress or succeeded when the nomination came.
    assert_eq!(a.pairs, 1);
    assert_eq!(b.pairs, 1);
    assert_eq!(a.checks_sent, 2, "{a:?}");
    assert_eq!(b.checks_sent, 1, "{b:?}");
    assert_eq!(a.checks_received, b.checks_sent);
    assert_eq!(b.checks_received, a.checks_sent);
    assert_eq!(a.responses_received, 2);
    // Gathering: one Binding to the STUN server each, answered, no srflx (no NAT).
    assert_eq!(a.gather_requests_sent, 1);
    assert_eq!(a.stun_transactions, 3);
    // Network RTT is 2 x 10 ms links each way.
    assert_eq!(a.rtt, Some(Duration::from_millis(40)));
    assert_eq!(w.a.agent.state(), IceState::Completed);
    assert_eq!(w.b.agent.state(), IceState::Completed);
}

#[test]
fn aggressive_nomination_connects_in_one_round_trip() {
    let mut w = World::new(
        8,
        "full-cone",
        "full-cone",
        Opts {
            nomination: Nomination::Aggressive,
            ..Opts::default()
        },
    );
    let out = w.run(Duration::from_secs(10));
    assert!(out.connected, "{out:?}");
    assert_eq!(out.path_a, Some(Path::ServerReflexive));
    // Regular nomination needs an extra round trip for the USE-CANDIDATE check.
    let mut r = World::new(8, "full-cone", "full-cone", Opts::default());
    let regular = r.run(Duration::from_secs(10));
    assert!(out.connected_at.unwrap() < regular.connected_at.unwrap());
}

#[test]
fn loss_and_reordering_are_survived() {
    for seed in 0..8 {
        let mut w = World::new(
            100 + seed,
            "port-restricted-cone",
            "restricted-cone",
            Opts {
                loss: 0.2,
                reorder: 0.3,
                ..Opts::default()
            },
        );
        let out = w.run(Duration::from_secs(40));
        assert!(out.connected, "seed {seed}: {out:?}");
        assert_eq!(out.path_a, Some(Path::ServerReflexive), "seed {seed}");
        // Loss shows up as retransmissions.
        let a = w.a.agent.stats();
        assert!(a.checks_sent >= 2, "{a:?}");
    }
}

#[test]
fn role_conflict_is_resolved_rfc8445_7_3_1_1() {
    for (both_controlling, seed) in [(true, 21), (false, 22), (true, 23), (false, 24)] {
        let mut w = World::new(
            seed,
            "full-cone",
            "none",
            Opts {
                b_controlling: Some(both_controlling),
                a_controlling: Some(both_controlling),
                ..Opts::default()
            },
        );
        let out = w.run(Duration::from_secs(20));
        assert!(out.connected, "{out:?}");
        assert_ne!(
            w.a.agent.is_controlling(),
            w.b.agent.is_controlling(),
            "roles resolved"
        );
        let switches = w.a.agent.stats().role_switches + w.b.agent.stats().role_switches;
        assert_eq!(switches, 1, "exactly one agent switches");
    }
}

#[test]
fn consent_loss_is_detected_rfc7675() {
    let mut w = World::new(31, "none", "none", Opts::default());
    let out = w.run(Duration::from_secs(10));
    assert!(out.connected);
    // B vanishes: A's consent checks go unanswered.
    w.silence_b = true;
    let t0 = w.clock.now();
    w.run_until(
        |w| w.a.agent.state() == IceState::Disconnected,
        Duration::from_secs(20),
    );
    assert_eq!(w.a.agent.state(), IceState::Disconnected);
    let disc = w.clock.now() - t0;
    // The last consent answer came before the silence: at most 8 s (disconnected_timeout)
    // after the silence began, and at least 8 s minus one consent interval (6 s max).
    assert!(
        disc >= Duration::from_secs(2) && disc <= Duration::from_secs(8),
        "{disc:?}"
    );
    w.run_until(
        |w| w.a.agent.state() == IceState::Failed,
        Duration::from_secs(40),
    );
    assert_eq!(w.a.agent.failure(), Some(FailReason::ConsentExpired));
    let failed = w.clock.now() - t0;
    assert!(failed <= Duration::from_secs(31), "{failed:?}");
    assert!(w.a.agent.stats().consent_requests >= 5);
}

#[test]
fn consent_keeps_an_idle_connection_alive() {
    let mut w = World::new(32, "port-restricted-cone", "none", Opts::default());
    assert!(w.run(Duration::from_secs(10)).connected);
    // Two minutes of no application data: consent checks keep the NAT mapping (udp_timeout
    // in the preset is 2 min... shortened to 30 s here) and the state alive.
    w.run_until(|_| false, Duration::from_secs(120));
    assert!(w.a.agent.state().is_connected());
    assert!(w.b.agent.state().is_connected());
    assert!(w.exchange_data());
}

#[test]
fn restart_selects_a_new_pair_and_keeps_data_flowing() {
    let mut w = World::new(41, "full-cone", "restricted-cone", Opts::default());
    let out = w.run(Duration::from_secs(10));
    assert!(out.connected);
    let old_ufrag = w.a.agent.local_credentials().ufrag.clone();
    w.restart();
    assert_ne!(w.a.agent.local_credentials().ufrag, old_ufrag);
    // Data still flows over the previous pair while the new checks run.
    assert!(w.exchange_data());
    w.run_until(
        |w| w.a.agent.state().is_connected() && w.b.agent.state().is_connected(),
        Duration::from_secs(20),
    );
    assert!(w.a.agent.state().is_connected());
    assert_eq!(w.a.agent.stats().restarts, 1);
    assert!(w.exchange_data());
}

#[test]
fn vanilla_waits_for_gathering_trickle_does_not() {
    let opts = |trickle| Opts {
        trickle,
        stun_delay: Duration::from_millis(300),
        ..Opts::default()
    };
    let mut t = World::new(51, "none", "none", opts(true));
    let trickled = t.run(Duration::from_secs(10));
    let mut v = World::new(51, "none", "none", opts(false));
    let vanilla = v.run(Duration::from_secs(10));
    assert!(trickled.connected && vanilla.connected);
    // Vanilla cannot signal before the slow STUN server answered; trickle can.
    assert!(
        trickled.connected_at.unwrap() + Duration::from_millis(200) < vanilla.connected_at.unwrap(),
        "{trickled:?} {vanilla:?}"
    );
}

#[test]
fn no_answer_fails_after_the_bounded_time() {
    let mut w = World::new(61, "none", "none", Opts::default());
    w.silence_b = true;
    let out = w.run(Duration::from_secs(60));
    assert!(!out.connected);
    assert_eq!(out.fail_a, Some(FailReason::NoValidPair));
    // Each pair gives up after 4.6 s of checks.
    assert!(out.ended_at <= Duration::from_secs(6), "{out:?}");
}

#[test]
fn relay_only_without_a_turn_server_never_connects() {
    let mut w = World::new(
        71,
        "none",
        "none",
        Opts {
            policy: Policy::RelayOnly,
            ..Opts::default()
        },
    );
    let out = w.run(Duration::from_secs(40));
    assert!(!out.connected);
    assert!(w.a.agent.local_candidates().is_empty());
    assert!(
        !w.a.agent
            .local_candidates()
            .iter()
            .any(|c| c.kind == CandidateKind::Host)
    );
}

#[test]
fn lite_agent_answers_and_is_selected() {
    let mut w = World::new(
        81,
        "port-restricted-cone",
        "none",
        Opts {
            b_lite: true,
            ..Opts::default()
        },
    );
    let out = w.run(Duration::from_secs(10));
    assert!(out.connected, "{out:?}");
    assert!(w.a.agent.is_controlling());
    assert_eq!(w.b.agent.stats().checks_sent, 0);
    assert!(out.data_ok);
}

#[test]
fn trickle_peer_reflexive_first_then_signalled_candidate_rfc8838() {
    // B's candidates arrive at A 2 s late: A learns B's address from B's check as a
    // peer-reflexive candidate (RFC 8445 §7.3.1.3), connects with it, and the late signalled
    // host candidate then takes its place.
    let mut w = World::new(
        91,
        "none",
        "none",
        Opts {
            b_candidate_delay: Duration::from_secs(2),
            ..Opts::default()
        },
    );
    let out = w.run(Duration::from_secs(1));
    assert!(out.connected, "{out:?}");
    assert_eq!(out.path_a, Some(Path::PeerReflexive));
    assert!(out.connected_at.unwrap() < Duration::from_millis(300));
    w.run_until(|_| false, Duration::from_secs(3));
    let (_, remote) = w.a.agent.selected_pair().unwrap();
    assert_eq!(remote.kind, CandidateKind::Host);
    assert!(w.a.agent.state().is_connected());
}

#[test]
fn with_a_turn_server_every_pair_connects_and_relays_only_when_needed() {
    // The same grid with the `turn::relay` core on the public network: where the oracle says
    // no direct path exists, the relay carries it; elsewhere the direct path still wins.
    for (i, a) in KINDS.iter().enumerate() {
        for b in KINDS.iter() {
            let mut w = World::new(
                2000 + i as u64,
                a,
                b,
                Opts {
                    turn: true,
                    ..Opts::default()
                },
            );
            let out = w.run(Duration::from_secs(40));
            let want = oracle(a, b).unwrap_or(Path::Relayed);
            let ctx = format!("{a} vs {b}: {out:?}");
            assert!(out.connected, "{ctx}");
            assert_eq!(out.path_a, Some(want), "{ctx}");
            assert_eq!(out.path_b, Some(want), "{ctx}");
            assert!(out.data_ok, "{ctx}");
        }
    }
}

#[test]
fn relay_only_through_the_turn_core_with_exact_counters() {
    let mut w = World::new(
        3001,
        "symmetric",
        "port-restricted-cone",
        Opts {
            turn: true,
            policy: Policy::RelayOnly,
            ..Opts::default()
        },
    );
    let out = w.run(Duration::from_secs(20));
    assert!(out.connected, "{out:?}");
    assert_eq!(out.path_a, Some(Path::Relayed));
    assert_eq!(out.path_b, Some(Path::Relayed));
    assert!(out.data_ok);
    let (a, b) = (w.a.agent.local_candidates(), w.b.agent.local_candidates());
    assert!(
        a.iter().chain(&b).all(|c| c.kind == CandidateKind::Relayed),
        "{a:?} {b:?}"
    );
    assert_eq!((a.len(), b.len()), (1, 1));
    let (sa, sb) = (w.a.agent.stats(), w.b.agent.stats());
    // One pair each side (relay to relay). A: its check and its nomination; B: one check.
    // No STUN gathering under relay-only (the Allocates are the TURN client's).
    assert_eq!((sa.pairs, sb.pairs), (1, 1));
    assert_eq!((sa.checks_sent, sb.checks_sent), (2, 1), "{sa:?} {sb:?}");
    assert_eq!((sa.checks_received, sb.checks_received), (1, 2));
    assert_eq!((sa.gather_requests_sent, sb.gather_requests_sent), (0, 0));
    assert_eq!(w.turn.as_ref().unwrap().server.allocations(), 2);
}

/// The nine RFC 4787 mapping x filtering combinations, by preset name.
fn nine_combinations() -> [(&'static str, nat::Behavior, nat::Behavior); 9] {
    use nat::Behavior::{
        AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
    };
    [
        ("eim-eif", Ei, Ei),
        ("eim-adf", Ei, Ad),
        ("eim-apdf", Ei, Apd),
        ("adm-eif", Ad, Ei),
        ("adm-adf", Ad, Ad),
        ("adm-apdf", Ad, Apd),
        ("apdm-eif", Apd, Ei),
        ("apdm-adf", Apd, Ad),
        ("apdm-apdf", Apd, Apd),
    ]
}

/// The direct path `nat::oracle::direct` derives between two single NATs given as (mapping,
/// filtering); `None` when no direct path exists.
fn oracle_path(
    a: (nat::Behavior, nat::Behavior),
    b: (nat::Behavior, nat::Behavior),
) -> Option<Path> {
    use nat::oracle::{Direct, Level, Remote, direct};
    match direct(&[Level::nat(a.0, a.1)], &[Level::nat(b.0, b.1)]) {
        Direct::Connects(Remote::Signalled, Remote::Signalled) => Some(Path::ServerReflexive),
        Direct::Connects(..) => Some(Path::PeerReflexive),
        Direct::Impossible | Direct::UdpBlocked => None,
    }
}

/// The nine RFC 4787 mapping x filtering combinations against each other (81 pairs): the path
/// the agents choose must be the one `nat::oracle` derives from the RFC's definitions (its own
/// symbolic replay of ICE checks, independent of both this agent and the NAT model).
#[test]
fn all_nine_by_nine_rfc4787_pairs_match_the_nat_oracle() {
    let combos = nine_combinations();
    let mut mismatches = Vec::new();
    for (i, (a, am, af)) in combos.iter().enumerate() {
        for (b, bm, bf) in combos.iter() {
            let want = oracle_path((*am, *af), (*bm, *bf));
            let mut w = World::new(2000 + i as u64, a, b, Opts::default());
            let out = w.run(Duration::from_secs(40));
            let ok = match want {
                Some(p) => out.connected && out.path_a == Some(p) && out.path_b == Some(p),
                None => !out.connected,
            };
            if !ok {
                mismatches.push(format!("{a} vs {b}: oracle {want:?}, agents {out:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The nine RFC 4787 mapping x filtering combinations against each other with a TURN server
/// (the `turn::relay` core) on the public network, trickle and vanilla: every pair connects,
/// over the relay exactly where `nat::oracle::direct` says no direct path exists, and over the
/// same direct path as without TURN elsewhere. (apdm-eif against apdm-eif once never
/// connected: an endless chain of peer-reflexive candidates on the host sockets starved the
/// relayed checks and filled the controlled agent's candidate table.)
#[test]
fn all_nine_by_nine_rfc4787_pairs_with_turn_connect_and_relay_only_when_impossible() {
    let combos = nine_combinations();
    let mut mismatches = Vec::new();
    let mut relayed = 0;
    for (i, (a, am, af)) in combos.iter().enumerate() {
        for (b, bm, bf) in combos.iter() {
            for trickle in [true, false] {
                let want = oracle_path((*am, *af), (*bm, *bf)).unwrap_or(Path::Relayed);
                let mut w = World::new(
                    4000 + i as u64,
                    a,
                    b,
                    Opts {
                        turn: true,
                        trickle,
                        ..Opts::default()
                    },
                );
                let out = w.run(Duration::from_secs(40));
                // icepeer gives up after 10 s: every cell must be well inside that.
                let ok = out.connected
                    && out.path_a == Some(want)
                    && out.path_b == Some(want)
                    && out.data_ok
                    && out.connected_at.is_some_and(|t| t < Duration::from_secs(5));
                if !ok {
                    mismatches.push(format!(
                        "{a} vs {b} trickle={trickle}: want {want:?}, agents {out:?}"
                    ));
                }
                if want == Path::Relayed {
                    relayed += 1;
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The oracle's impossible cells are the ones with a port-dependent mapping on one side
    // against port-dependent filtering or mapping on the other: not a handful of them.
    assert!(relayed >= 10, "{relayed}");
}

/// apdm-eif on both sides, the cell that never connected: every triggered check leaves through a
/// fresh NAT mapping that the other side's EIF filter lets in, so each side keeps learning "new"
/// peer-reflexive addresses of the other. The agents must bound that learning, check the relayed
/// pairs in time, and agree on the relayed pair.
#[test]
fn apdm_eif_both_sides_relays_without_a_peer_reflexive_storm() {
    for trickle in [true, false] {
        let mut w = World::new(
            4242,
            "apdm-eif",
            "apdm-eif",
            Opts {
                turn: true,
                trickle,
                ..Opts::default()
            },
        );
        let out = w.run(Duration::from_secs(40));
        let ctx = format!("trickle={trickle}: {out:?}");
        assert!(out.connected, "{ctx}");
        assert_eq!(out.path_a, Some(Path::Relayed), "{ctx}");
        assert_eq!(out.path_b, Some(Path::Relayed), "{ctx}");
        assert!(out.data_ok, "{ctx}");
        assert!(out.connected_at.unwrap() < Duration::from_secs(3), "{ctx}");
        for p in [&w.a, &w.b] {
            let prflx = p
                .agent
                .remote_candidates()
                .iter()
                .filter(|c| c.kind == CandidateKind::PeerReflexive)
                .count();
            // Bounded per local base and remote IP (8 on the host socket, a few more through
            // the relay); unbounded, the chain filled the 256-entry table.
            assert!(prflx <= 12, "{prflx} prflx: {ctx}");
        }
        // Both agents selected the same path: each one's remote is the other's local.
        let (al, ar) = w.a.agent.selected_pair().unwrap();
        let (bl, br) = w.b.agent.selected_pair().unwrap();
        assert_eq!(al.addr, br.addr, "{ctx}");
        assert_eq!(bl.addr, ar.addr, "{ctx}");
        // The connection lasts: consent over the relayed pair keeps both sides connected.
        w.run_until(|_| false, Duration::from_secs(20));
        assert!(w.a.agent.state().is_connected(), "{ctx}");
        assert!(w.b.agent.state().is_connected(), "{ctx}");
        assert!(w.exchange_data(), "{ctx}");
    }
}
