//! RFC 4787 classification from RFC 5780 test outcomes: a pure function, no I/O, no clock.
//!
//! The driver runs the tests and fills [`Observations`]; [`classify`] turns them into
//! [`Classification`]. Every conclusion carries whether it is *firm* (decided by RFC 5780 tests
//! against a server that passed its checks) or only a *bound* (inferred from comparing what
//! several plain STUN servers saw).

use std::net::SocketAddr;

use serde::Serialize;

/// RFC 4787 mapping or filtering behaviour (§4.1, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown,
}

impl Behaviour {
    /// The RFC 4787 words.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::Unknown => "unknown",
        }
    }
}

/// How sure a conclusion is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Certainty {
    /// Decided by the RFC 5780 tests.
    Firm,
    /// Inferred from comparing plain servers: a bound, not a measurement.
    Bound,
    /// Nothing could be concluded.
    None,
}

/// Whether the RFC 5780 server can be trusted for the tests that need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ServerCheck {
    /// OTHER-ADDRESS present and distinct, CHANGE-REQUEST honoured, origins consistent.
    Suitable,
    /// No OTHER-ADDRESS: a plain RFC 8489 server.
    NoOtherAddress,
    /// OTHER-ADDRESS does not differ from the primary in both address and port.
    OtherAddressNotDistinct {
        /// The primary address.
        primary: SocketAddr,
        /// The OTHER-ADDRESS it announced.
        other: SocketAddr,
    },
    /// Answered a CHANGE-REQUEST from an address other than the one asked for.
    ChangeRequestIgnored {
        /// Where the answer should have come from.
        expected: SocketAddr,
        /// Where it came from.
        actual: SocketAddr,
    },
    /// Refused CHANGE-REQUEST (420 or another error).
    ChangeRequestRefused {
        /// The error code.
        code: u16,
    },
    /// The alternate address did not answer the mapping tests.
    AlternateUnreachable,
    /// A mapping test was answered from another address than the one it was sent to.
    WrongSource {
        /// The test.
        test: String,
        /// Where it was sent.
        expected: SocketAddr,
        /// Where the answer came from.
        actual: SocketAddr,
    },
    /// RESPONSE-ORIGIN names another address than the answer came from: the server is
    /// misconfigured or sits behind a NAT itself, and its addresses cannot be trusted.
    ResponseOriginMismatch {
        /// The test.
        test: String,
        /// What RESPONSE-ORIGIN said.
        claimed: SocketAddr,
        /// Where the answer came from.
        actual: SocketAddr,
    },
}

impl ServerCheck {
    /// The `status` word of the JSON form.
    pub fn status(&self) -> &'static str {
        match self {
            ServerCheck::Suitable => "suitable",
            ServerCheck::NoOtherAddress => "no-other-address",
            ServerCheck::OtherAddressNotDistinct { .. } => "other-address-not-distinct",
            ServerCheck::ChangeRequestIgnored { .. } => "change-request-ignored",
            ServerCheck::ChangeRequestRefused { .. } => "change-request-refused",
            ServerCheck::AlternateUnreachable => "alternate-unreachable",
            ServerCheck::WrongSource { .. } => "wrong-source",
            ServerCheck::ResponseOriginMismatch { .. } => "response-origin-mismatch",
        }
    }

    /// Usable for filtering and lifetime tests.
    pub fn is_suitable(&self) -> bool {
        matches!(self, ServerCheck::Suitable)
    }
}

/// Outcome of a filtering test on the fresh socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterOutcome {
    /// The answer from the changed address arrived.
    Received,
    /// Nothing arrived.
    Blocked,
    /// The test could not be run or its answer proved nothing (server fault).
    Invalid,
}

/// What the driver observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observations {
    /// The local address the mapping socket used (a concrete IP, never 0.0.0.0).
    pub local: Option<SocketAddr>,
    /// The server the RFC 5780 tests ran against (or the first server, if none has RFC 5780).
    pub primary: Option<SocketAddr>,
    /// Test I: the mapped address seen by the primary server. `None`: no answer.
    pub mapped_i: Option<SocketAddr>,
    /// The RFC 5780 server's verdict, if an RFC 5780 test was attempted.
    pub server: Option<ServerCheck>,
    /// Mapping test II (to A2:P1): mapped address.
    pub mapped_ii: Option<SocketAddr>,
    /// Mapping test III (to A2:P2): mapped address.
    pub mapped_iii: Option<SocketAddr>,
    /// Filtering test II (change IP and port).
    pub filter_ii: Option<FilterOutcome>,
    /// Filtering test III (change port).
    pub filter_iii: Option<FilterOutcome>,
    /// Other servers: (server address, mapped address seen by it).
    pub cross: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// Whether any response showed MAPPED-ADDRESS != XOR-MAPPED-ADDRESS.
    pub alg: bool,
    /// Some server answered at all, even if only with an error response.
    pub responded: bool,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// No answer to test I from any server.
    pub udp_blocked: bool,
    /// A NAT is present (mapped address differs from the local one). `None` if unknown.
    pub nat: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// How sure `mapping` is.
    pub mapping_certainty: Certainty,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// How sure `filtering` is.
    pub filtering_certainty: Certainty,
    /// RFC 3489 name, derived; secondary.
    pub legacy: &'static str,
    /// Sentences explaining bounds, inconsistencies and server problems.
    pub notes: Vec<String>,
}

/// Classify. Total: every combination of inputs gives an answer.
pub fn classify(o: &Observations) -> Classification {
    let mut notes = vec![];
    let any_answer = o.mapped_i.is_some() || o.cross.iter().any(|(_, m)| m.is_some());
    if !any_answer && o.responded {
        return Classification {
            udp_blocked: false,
            nat: None,
            mapping: Behaviour::Unknown,
            mapping_certainty: Certainty::None,
            filtering: Behaviour::Unknown,
            filtering_certainty: Certainty::None,
            legacy: "unknown",
            notes: vec![
                "servers answered, but only with error responses: no mapped address to work \
                 with (see each server's error)"
                    .into(),
            ],
        };
    }
    if !any_answer {
        return Classification {
            udp_blocked: true,
            nat: None,
            mapping: Behaviour::Unknown,
            mapping_certainty: Certainty::None,
            filtering: Behaviour::Unknown,
            filtering_certainty: Certainty::None,
            legacy: "udp-blocked",
            notes: vec![
                "no server answered test I: UDP is blocked on this path, or every server is down"
                    .into(),
            ],
        };
    }
    // The first mapped address anyone saw stands for "the" mapping.
    let first = o.mapped_i.or_else(|| o.cross.iter().find_map(|(_, m)| *m));
    let nat = match (o.local, first) {
        (Some(l), Some(m)) => Some(l != m),
        _ => None,
    };
    let suitable = o.server.as_ref().is_some_and(ServerCheck::is_suitable);
    // The mapping tests need only a distinct, reachable OTHER-ADDRESS; CHANGE-REQUEST is for
    // filtering.
    let mapping_ok = matches!(
        o.server,
        Some(
            ServerCheck::Suitable
                | ServerCheck::ChangeRequestIgnored { .. }
                | ServerCheck::ChangeRequestRefused { .. }
                | ServerCheck::ResponseOriginMismatch { .. }
        )
    );

    // Mapping: RFC 5780 §4.3.
    let (mut mapping, mut mapping_certainty) = match (mapping_ok, o.mapped_i, o.mapped_ii) {
        (true, Some(i), Some(ii)) if i == ii => (Behaviour::EndpointIndependent, Certainty::Firm),
        (true, Some(_), Some(ii)) => match o.mapped_iii {
            Some(iii) if iii == ii => (Behaviour::AddressDependent, Certainty::Firm),
            Some(_) => (Behaviour::AddressAndPortDependent, Certainty::Firm),
            None => {
                notes.push(
                    "mapping test III got no answer: mapping is at least address-dependent".into(),
                );
                (Behaviour::AddressDependent, Certainty::Bound)
            }
        },
        _ => (Behaviour::Unknown, Certainty::None),
    };
    if nat == Some(false) && mapping_certainty != Certainty::Firm {
        // No translation at all: nothing can depend on the destination.
        mapping = Behaviour::EndpointIndependent;
        mapping_certainty = Certainty::Firm;
    }

    // Cross-check across servers (the primary's test I included).
    let mut seen: Vec<(SocketAddr, SocketAddr)> = o
        .cross
        .iter()
        .filter_map(|(s, m)| m.map(|m| (*s, m)))
        .collect();
    if let (Some(m), Some(server)) = (o.mapped_i, o.primary) {
        seen.insert(0, (server, m));
    }
    let varies = seen.windows(2).any(|w| w[0].1 != w[1].1);
    let distinct_ips = {
        let mut ips: Vec<_> = seen.iter().map(|(s, _)| s.ip()).collect();
        ips.sort();
        ips.dedup();
        ips.len()
    };
    if varies {
        let ips_vary = seen.windows(2).any(|w| w[0].1.ip() != w[1].1.ip());
        if ips_vary {
            notes.push(
                "different servers saw different external IP addresses: the NAT pools addresses \
                 per destination (RFC 4787 REQ-2 recommends paired pooling)"
                    .into(),
            );
        }
        match mapping_certainty {
            Certainty::Firm if mapping == Behaviour::EndpointIndependent => notes.push(
                "the RFC 5780 tests found endpoint-independent mapping, but other servers saw \
                 other mapped addresses: the NAT is inconsistent (several external addresses or \
                 ports); treat the mapping as unstable"
                    .into(),
            ),
            Certainty::Firm => {}
            _ => {
                mapping = Behaviour::AddressDependent;
                mapping_certainty = Certainty::Bound;
                notes.push(
                    "the mapped address changes with the destination: mapping is \
                     address-dependent or address-and-port-dependent (an RFC 5780 server is \
                     needed to tell which)"
                        .into(),
                );
            }
        }
    } else if mapping_certainty == Certainty::None && seen.len() >= 2 && distinct_ips >= 2 {
        mapping = Behaviour::EndpointIndependent;
        mapping_certainty = Certainty::Bound;
        notes.push(format!(
            "{} servers at {distinct_ips} addresses saw the same mapped address: consistent with \
             endpoint-independent mapping, but only an RFC 5780 server can prove it",
            seen.len()
        ));
    } else if mapping_certainty == Certainty::None {
        notes.push(
            "mapping could not be tested: use an RFC 5780 server or give two or more servers"
                .into(),
        );
    }

    // Filtering: RFC 5780 §4.4.
    let (filtering, filtering_certainty) = if !suitable {
        (Behaviour::Unknown, Certainty::None)
    } else {
        match (o.filter_ii, o.filter_iii) {
            (Some(FilterOutcome::Received), _) => (Behaviour::EndpointIndependent, Certainty::Firm),
            (Some(FilterOutcome::Blocked), Some(FilterOutcome::Received)) => {
                (Behaviour::AddressDependent, Certainty::Firm)
            }
            (Some(FilterOutcome::Blocked), Some(FilterOutcome::Blocked)) => {
                (Behaviour::AddressAndPortDependent, Certainty::Firm)
            }
            (Some(FilterOutcome::Blocked), _) => {
                notes.push(
                    "filtering test III was inconclusive: filtering is at least \
                     address-dependent"
                        .into(),
                );
                (Behaviour::AddressDependent, Certainty::Bound)
            }
            _ => (Behaviour::Unknown, Certainty::None),
        }
    };
    match &o.server {
        Some(ServerCheck::Suitable) => {}
        Some(s) => notes.push(server_note(s)),
        None => notes.push(
            "no RFC 5780 server answered: filtering cannot be tested (give one, or use the \
             defaults)"
                .into(),
        ),
    }
    if o.alg {
        notes.push(
            "MAPPED-ADDRESS differs from XOR-MAPPED-ADDRESS: an ALG on the path rewrites \
             addresses inside packets"
                .into(),
        );
    }
    if nat == Some(false)
        && filtering != Behaviour::EndpointIndependent
        && filtering != Behaviour::Unknown
    {
        notes.push("no NAT, but a firewall filters unsolicited inbound traffic".into());
    }

    let legacy = legacy_name(nat, mapping, filtering);
    Classification {
        udp_blocked: false,
        nat,
        mapping,
        mapping_certainty,
        filtering,
        filtering_certainty,
        legacy,
        notes,
    }
}

fn server_note(s: &ServerCheck) -> String {
    match s {
        ServerCheck::Suitable => String::new(),
        ServerCheck::NoOtherAddress => {
            "the server sent no OTHER-ADDRESS: it does not implement RFC 5780, so filtering and \
             the firm mapping tests were not run. Try an RFC 5780 server (natprobe with no \
             arguments uses public ones) or your own: turnd --listen IP:3478 --alt-ip IP2"
                .into()
        }
        ServerCheck::OtherAddressNotDistinct { primary, other } => format!(
            "the server's OTHER-ADDRESS {other} does not differ from {primary} in both address \
             and port: unsuitable for RFC 5780 tests"
        ),
        ServerCheck::ChangeRequestIgnored { expected, actual } => format!(
            "the server ignores CHANGE-REQUEST (asked for an answer from {expected}, got one \
             from {actual}): unsuitable, filtering not classified"
        ),
        ServerCheck::ChangeRequestRefused { code } => format!(
            "the server refused CHANGE-REQUEST with error {code}: unsuitable, filtering not \
             classified"
        ),
        ServerCheck::AlternateUnreachable => {
            "the server's alternate address never answered: its RFC 5780 setup is broken or \
             the path to it is blocked; results from it are not trusted"
                .into()
        }
        ServerCheck::WrongSource {
            test,
            expected,
            actual,
        } => format!(
            "{test} was sent to {expected} but answered from {actual}: unsuitable, mapping and \
             filtering not classified from this server"
        ),
        ServerCheck::ResponseOriginMismatch {
            test,
            claimed,
            actual,
        } => format!(
            "{test}: RESPONSE-ORIGIN says {claimed} but the answer came from {actual} (the \
             server is misconfigured or behind a NAT): unsuitable for filtering"
        ),
    }
}

/// How a test was answered, as far as judging the server goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer {
    /// `None`: no answer. `Some(None)`: success. `Some(Some(code))`: error response.
    pub reply: Option<Option<u16>>,
    /// Where the answer came from.
    pub from: Option<SocketAddr>,
    /// RESPONSE-ORIGIN, if sent.
    pub origin: Option<SocketAddr>,
}

impl Answer {
    /// A success response from `from` with RESPONSE-ORIGIN `origin`.
    pub fn success(from: SocketAddr, origin: Option<SocketAddr>) -> Answer {
        Answer {
            reply: Some(None),
            from: Some(from),
            origin,
        }
    }

    fn succeeded(&self) -> bool {
        self.reply == Some(None)
    }
}

/// Everything needed to decide whether an RFC 5780 server can be trusted (§4.2: the client
/// must check the server before believing the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvidence {
    /// Primary IP, alternate port.
    pub a1p2: SocketAddr,
    /// Alternate IP, primary port.
    pub a2p1: SocketAddr,
    /// Alternate IP and port (OTHER-ADDRESS).
    pub a2p2: SocketAddr,
    /// Mapping test II, sent to A2:P1.
    pub mapping_ii: Answer,
    /// Mapping test III, sent to A2:P2.
    pub mapping_iii: Answer,
    /// CHANGE-REQUEST (IP and port) from the mapping socket after it talked to A2:P2.
    pub verify: Answer,
    /// Filtering test II (change IP and port), fresh socket.
    pub filter_ii: Answer,
    /// Filtering test III (change port), fresh socket.
    pub filter_iii: Answer,
}

/// Judge the server from the answers: the first failure, in order of how much it invalidates,
/// decides; notes explain what could not be confirmed.
pub fn judge_server(e: &ServerEvidence) -> (ServerCheck, Vec<String>) {
    let mut notes = vec![];
    if e.mapping_ii.reply.is_none() && e.mapping_iii.reply.is_none() {
        return (ServerCheck::AlternateUnreachable, notes);
    }
    for (test, a, sent_to) in [
        ("mapping-II", &e.mapping_ii, e.a2p1),
        ("mapping-III", &e.mapping_iii, e.a2p2),
    ] {
        if let Some(from) = a.from.filter(|f| a.reply.is_some() && *f != sent_to) {
            return (
                ServerCheck::WrongSource {
                    test: test.into(),
                    expected: sent_to,
                    actual: from,
                },
                notes,
            );
        }
    }
    let changed = [
        (&e.verify, e.a2p2),
        (&e.filter_ii, e.a2p2),
        (&e.filter_iii, e.a1p2),
    ];
    for (a, expected) in changed {
        if let (true, Some(from)) = (a.succeeded(), a.from) {
            if from != expected {
                let check = ServerCheck::ChangeRequestIgnored {
                    expected,
                    actual: from,
                };
                return (check, notes);
            }
        }
    }
    for (a, _) in changed {
        if let Some(Some(code)) = a.reply {
            return (ServerCheck::ChangeRequestRefused { code }, notes);
        }
    }
    let all = [
        ("mapping-II", &e.mapping_ii),
        ("mapping-III", &e.mapping_iii),
        ("server-check", &e.verify),
        ("filtering-II", &e.filter_ii),
        ("filtering-III", &e.filter_iii),
    ];
    for (test, a) in all {
        if let (Some(claimed), Some(actual)) = (a.origin, a.from) {
            if claimed != actual {
                let check = ServerCheck::ResponseOriginMismatch {
                    test: test.into(),
                    claimed,
                    actual,
                };
                return (check, notes);
            }
        }
    }
    if e.verify.reply.is_none() {
        notes.push(
            "could not confirm that the server honours CHANGE-REQUEST (the check from the \
             mapping socket got no answer); filtering results assume it does"
                .into(),
        );
    }
    (ServerCheck::Suitable, notes)
}

/// RFC 3489 vocabulary, derived (RFC 4787 §3 explains why it is imprecise).
pub fn legacy_name(nat: Option<bool>, mapping: Behaviour, filtering: Behaviour) -> &'static str {
    use Behaviour::*;
    match (nat, mapping, filtering) {
        (Some(false), _, EndpointIndependent) => "open-internet",
        (Some(false), _, AddressDependent | AddressAndPortDependent) => "symmetric-udp-firewall",
        (Some(false), _, Unknown) => "no-nat",
        (_, AddressDependent | AddressAndPortDependent, _) => "symmetric",
        (_, EndpointIndependent, EndpointIndependent) => "full-cone",
        (_, EndpointIndependent, AddressDependent) => "restricted-cone",
        (_, EndpointIndependent, AddressAndPortDependent) => "port-restricted-cone",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Behaviour::*;
    use FilterOutcome::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const LOCAL: &str = "192.168.1.10:5000";
    const M1: &str = "203.0.113.5:40000";
    const M2: &str = "203.0.113.5:40001";
    const M3: &str = "203.0.113.5:40002";

    fn base() -> Observations {
        Observations {
            responded: true,
            local: Some(a(LOCAL)),
            primary: Some(a("192.0.2.1:3478")),
            mapped_i: Some(a(M1)),
            server: Some(ServerCheck::Suitable),
            ..Default::default()
        }
    }

    /// RFC 5780 §4.3 and §4.4, every combination of the mapping and filtering outcomes.
    #[test]
    fn every_mapping_and_filtering_combination() {
        // (mapped II, mapped III) -> mapping
        let mapping_cases: [(Option<&str>, Option<&str>, Behaviour, Certainty); 6] = [
            (Some(M1), None, EndpointIndependent, Certainty::Firm),
            (Some(M1), Some(M2), EndpointIndependent, Certainty::Firm),
            (Some(M2), Some(M2), AddressDependent, Certainty::Firm),
            (Some(M2), Some(M3), AddressAndPortDependent, Certainty::Firm),
            (Some(M2), None, AddressDependent, Certainty::Bound),
            (None, None, Unknown, Certainty::None),
        ];
        // (filter II, filter III) -> filtering
        let filtering_cases: [(
            Option<FilterOutcome>,
            Option<FilterOutcome>,
            Behaviour,
            Certainty,
        ); 9] = [
            (
                Some(Received),
                Some(Received),
                EndpointIndependent,
                Certainty::Firm,
            ),
            (
                Some(Received),
                Some(Blocked),
                EndpointIndependent,
                Certainty::Firm,
            ),
            (
                Some(Blocked),
                Some(Received),
                AddressDependent,
                Certainty::Firm,
            ),
            (
                Some(Blocked),
                Some(Blocked),
                AddressAndPortDependent,
                Certainty::Firm,
            ),
            (
                Some(Blocked),
                Some(Invalid),
                AddressDependent,
                Certainty::Bound,
            ),
            (Some(Blocked), None, AddressDependent, Certainty::Bound),
            (Some(Invalid), Some(Received), Unknown, Certainty::None),
            (None, None, Unknown, Certainty::None),
            (Some(Invalid), Some(Invalid), Unknown, Certainty::None),
        ];
        for (ii, iii, mapping, mc) in mapping_cases {
            for (fii, fiii, filtering, fc) in filtering_cases {
                let o = Observations {
                    mapped_ii: ii.map(a),
                    mapped_iii: iii.map(a),
                    filter_ii: fii,
                    filter_iii: fiii,
                    ..base()
                };
                let c = classify(&o);
                let case = format!("{ii:?} {iii:?} {fii:?} {fiii:?}");
                assert!(!c.udp_blocked, "{case}");
                assert_eq!(c.nat, Some(true), "{case}");
                assert_eq!((c.mapping, c.mapping_certainty), (mapping, mc), "{case}");
                assert_eq!(
                    (c.filtering, c.filtering_certainty),
                    (filtering, fc),
                    "{case}"
                );
                assert_eq!(
                    c.legacy,
                    legacy_name(Some(true), mapping, filtering),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn legacy_names() {
        let t = [
            (
                Some(true),
                EndpointIndependent,
                EndpointIndependent,
                "full-cone",
            ),
            (
                Some(true),
                EndpointIndependent,
                AddressDependent,
                "restricted-cone",
            ),
            (
                Some(true),
                EndpointIndependent,
                AddressAndPortDependent,
                "port-restricted-cone",
            ),
            (
                Some(true),
                AddressDependent,
                AddressAndPortDependent,
                "symmetric",
            ),
            (
                Some(true),
                AddressAndPortDependent,
                EndpointIndependent,
                "symmetric",
            ),
            (Some(true), EndpointIndependent, Unknown, "unknown"),
            (
                Some(false),
                EndpointIndependent,
                EndpointIndependent,
                "open-internet",
            ),
            (
                Some(false),
                EndpointIndependent,
                AddressAndPortDependent,
                "symmetric-udp-firewall",
            ),
            (Some(false), EndpointIndependent, Unknown, "no-nat"),
            (None, Unknown, Unknown, "unknown"),
        ];
        for (nat, m, f, want) in t {
            assert_eq!(legacy_name(nat, m, f), want, "{nat:?} {m:?} {f:?}");
        }
    }

    #[test]
    fn udp_blocked_when_nothing_answers() {
        let o = Observations {
            local: Some(a(LOCAL)),
            cross: vec![(a("192.0.2.9:3478"), None)],
            ..Default::default()
        };
        let c = classify(&o);
        assert!(c.udp_blocked);
        assert_eq!(c.nat, None);
        assert_eq!(c.legacy, "udp-blocked");
        assert_eq!(c.mapping, Unknown);
    }

    #[test]
    fn no_nat_open_internet_and_firewall() {
        let open = Observations {
            mapped_i: Some(a(LOCAL)),
            mapped_ii: Some(a(LOCAL)),
            filter_ii: Some(Received),
            filter_iii: Some(Received),
            ..base()
        };
        let c = classify(&open);
        assert_eq!(c.nat, Some(false));
        assert_eq!(
            (c.mapping, c.filtering),
            (EndpointIndependent, EndpointIndependent)
        );
        assert_eq!(c.legacy, "open-internet");

        let firewall = Observations {
            filter_ii: Some(Blocked),
            filter_iii: Some(Blocked),
            ..open
        };
        let c = classify(&firewall);
        assert_eq!(c.nat, Some(false));
        assert_eq!(c.filtering, AddressAndPortDependent);
        assert_eq!(c.legacy, "symmetric-udp-firewall");
        assert!(c.notes.iter().any(|n| n.contains("firewall")));
    }

    #[test]
    fn unsuitable_server_never_yields_endpoint_independent_filtering() {
        for server in [
            ServerCheck::NoOtherAddress,
            ServerCheck::ChangeRequestIgnored {
                expected: a("192.0.2.2:3479"),
                actual: a("192.0.2.1:3478"),
            },
            ServerCheck::ChangeRequestRefused { code: 420 },
            ServerCheck::OtherAddressNotDistinct {
                primary: a("192.0.2.1:3478"),
                other: a("192.0.2.1:3479"),
            },
            ServerCheck::AlternateUnreachable,
        ] {
            let o = Observations {
                server: Some(server.clone()),
                mapped_ii: Some(a(M1)),
                filter_ii: Some(Received),
                filter_iii: Some(Received),
                ..base()
            };
            let c = classify(&o);
            assert_eq!(c.filtering, Unknown, "{server:?}");
            assert_eq!(c.filtering_certainty, Certainty::None);
            // Mapping only needs a distinct, reachable OTHER-ADDRESS.
            let mapping_usable = matches!(
                server,
                ServerCheck::ChangeRequestIgnored { .. } | ServerCheck::ChangeRequestRefused { .. }
            );
            assert_eq!(
                c.mapping_certainty == Certainty::Firm,
                mapping_usable,
                "{server:?}"
            );
            assert!(c.notes.iter().any(|n| n.contains("unsuitable")
                || n.contains("RFC 5780")
                || n.contains("broken")));
        }
    }

    #[test]
    fn cross_check_without_rfc5780_gives_bounds() {
        // Two plain servers at different IPs, same mapped address: EIM as a bound.
        let same = Observations {
            server: Some(ServerCheck::NoOtherAddress),
            cross: vec![(a("198.51.100.1:19302"), Some(a(M1)))],
            ..base()
        };
        let c = classify(&same);
        assert_eq!(
            (c.mapping, c.mapping_certainty),
            (EndpointIndependent, Certainty::Bound)
        );
        assert_eq!(c.filtering, Unknown);

        // Different mapped ports: destination-dependent, a bound.
        let varies = Observations {
            cross: vec![(a("198.51.100.1:19302"), Some(a(M2)))],
            ..same.clone()
        };
        let c = classify(&varies);
        assert_eq!(
            (c.mapping, c.mapping_certainty),
            (AddressDependent, Certainty::Bound)
        );
        assert_eq!(c.legacy, "symmetric");

        // A single plain server: nothing to say about mapping.
        let alone = Observations {
            cross: vec![],
            ..same
        };
        let c = classify(&alone);
        assert_eq!((c.mapping, c.mapping_certainty), (Unknown, Certainty::None));
    }

    #[test]
    fn cross_check_contradicting_firm_eim_is_reported() {
        let o = Observations {
            mapped_ii: Some(a(M1)),
            filter_ii: Some(Received),
            cross: vec![(a("198.51.100.1:19302"), Some(a("203.0.113.77:40000")))],
            ..base()
        };
        let c = classify(&o);
        assert_eq!(
            (c.mapping, c.mapping_certainty),
            (EndpointIndependent, Certainty::Firm)
        );
        assert!(c.notes.iter().any(|n| n.contains("inconsistent")));
        assert!(c.notes.iter().any(|n| n.contains("paired pooling")));
    }

    #[test]
    fn error_responses_only_are_not_udp_blocked() {
        let o = Observations {
            local: Some(a(LOCAL)),
            responded: true,
            cross: vec![(a("192.0.2.9:3478"), None)],
            ..Default::default()
        };
        let c = classify(&o);
        assert!(!c.udp_blocked);
        assert_eq!(c.legacy, "unknown");
        assert!(c.notes.iter().any(|n| n.contains("error responses")));
    }

    const A1P1: &str = "192.0.2.1:3478";
    const A1P2: &str = "192.0.2.1:3479";
    const A2P1: &str = "192.0.2.2:3478";
    const A2P2: &str = "192.0.2.2:3479";

    fn honest() -> ServerEvidence {
        let ok = |at: &str| Answer::success(a(at), Some(a(at)));
        ServerEvidence {
            a1p2: a(A1P2),
            a2p1: a(A2P1),
            a2p2: a(A2P2),
            mapping_ii: ok(A2P1),
            mapping_iii: ok(A2P2),
            verify: ok(A2P2),
            filter_ii: ok(A2P2),
            filter_iii: ok(A1P2),
        }
    }

    /// RFC 5780 §4.2 server checks: each way a server can fail, one at a time.
    #[test]
    fn judging_the_server() {
        let none = Answer::default();
        let from = |at: &str| Answer::success(a(at), Some(a(at)));
        let cases: Vec<(&str, ServerEvidence, &str)> = vec![
            ("honest", honest(), "suitable"),
            (
                "filtered changed answers are not the server's fault",
                ServerEvidence {
                    filter_ii: none,
                    filter_iii: none,
                    ..honest()
                },
                "suitable",
            ),
            (
                "alternate silent",
                ServerEvidence {
                    mapping_ii: none,
                    mapping_iii: none,
                    ..honest()
                },
                "alternate-unreachable",
            ),
            (
                "mapping II answered from the primary",
                ServerEvidence {
                    mapping_ii: from(A1P1),
                    ..honest()
                },
                "wrong-source",
            ),
            (
                "CHANGE-REQUEST ignored (verify)",
                ServerEvidence {
                    verify: from(A1P1),
                    filter_ii: none,
                    filter_iii: none,
                    ..honest()
                },
                "change-request-ignored",
            ),
            (
                "CHANGE-REQUEST ignored (filtering III)",
                ServerEvidence {
                    filter_iii: from(A1P1),
                    ..honest()
                },
                "change-request-ignored",
            ),
            (
                "CHANGE-REQUEST refused",
                ServerEvidence {
                    verify: Answer {
                        reply: Some(Some(420)),
                        from: Some(a(A1P1)),
                        origin: None,
                    },
                    ..honest()
                },
                "change-request-refused",
            ),
            (
                "RESPONSE-ORIGIN lies",
                ServerEvidence {
                    filter_ii: Answer::success(a(A2P2), Some(a("10.0.0.2:3479"))),
                    ..honest()
                },
                "response-origin-mismatch",
            ),
        ];
        for (name, e, want) in cases {
            let (check, _) = judge_server(&e);
            assert_eq!(check.status(), want, "{name}: {check:?}");
            // The JSON form carries the same word.
            let json = serde_json::to_value(&check).unwrap();
            assert_eq!(json["status"], want, "{name}");
        }
        let (_, notes) = judge_server(&ServerEvidence {
            verify: Answer::default(),
            ..honest()
        });
        assert!(notes.iter().any(|n| n.contains("could not confirm")));
    }

    #[test]
    fn alg_is_noted() {
        let o = Observations {
            alg: true,
            ..base()
        };
        assert!(classify(&o).notes.iter().any(|n| n.contains("ALG")));
    }
}
