//! The UDP plan (RFC 5780 §4.3-§4.6). See [`crate::run`] for the sockets and why filtering
//! has one of its own.

use std::net::SocketAddr;

use stun::rfc5780::BindingRequest;

use crate::classify::{FilterOutcome, Observations, ServerCheck};
use crate::client::{Observation, StunSocket};
use crate::report::Report;
use crate::run::{
    Findings, Prepared, ProbeConfig, ProbeError, check_other_address, finish, futures_join_all,
    survey,
};

pub(crate) async fn run(cfg: &ProbeConfig, mut p: Prepared) -> Result<Report, ProbeError> {
    let rt = cfg.retransmit;
    let m = StunSocket::bind(p.bind).await?;
    let plain = BindingRequest::default();
    let mut notes = vec![];

    // Test I to every server at once, from M.
    let test_i = futures_join_all(p.targets.iter().map(|(i, a)| {
        let name = format!("mapping-I {}", cfg.servers[*i]);
        let (m, pacer, plain, a) = (m.clone(), p.pacer.clone(), plain.clone(), *a);
        async move { m.transact(&name, a, &plain, rt, &pacer).await }
    }))
    .await;
    let s = survey(&mut p, &test_i, &mut notes);
    let mut tests = test_i;
    let mut obs = Observations {
        local: Some(m.local_addr()),
        cross: s.cross,
        alg: s.alg,
        ..Default::default()
    };
    let mut hairpinning = None;
    let mut lifetime = None;

    if let Some((pi, paddr, first)) = s.primary {
        obs.primary = Some(paddr);
        obs.mapped_i = first.mapped;
        let check = check_other_address(paddr, first.other_address);
        obs.server = Some(check.clone());
        match (check, first.other_address, first.mapped) {
            (ServerCheck::Suitable, Some(other), Some(mapped_i)) => {
                let t = rfc5780_tests(cfg, &p, &m, paddr, other, mapped_i, &mut obs, &mut notes)
                    .await?;
                hairpinning = t.hairpinning;
                tests.extend(t.tests);
                if cfg.lifetime {
                    let (l, mut t, note) =
                        crate::lifetime::measure(cfg, paddr, p.bind, &p.pacer).await?;
                    lifetime = l;
                    tests.append(&mut t);
                    notes.push(note);
                }
            }
            _ if cfg.lifetime => notes.push(format!(
                "--lifetime needs an RFC 5780 server (RESPONSE-PORT); {} is not usable for it",
                p.servers[pi].name
            )),
            _ => {}
        }
    }
    let findings = Findings {
        transport: "udp",
        local: m.local_addr(),
        obs,
        hairpinning,
        lifetime,
        tests,
        notes,
    };
    Ok(finish(p, findings))
}

struct Rfc5780Tests {
    hairpinning: Option<bool>,
    tests: Vec<Observation>,
}

/// Mapping II/III and the server check on M, filtering on a fresh F, hairpinning from H: all
/// at once. Fills `obs` and checks that every answer came from where it was asked to.
#[allow(clippy::too_many_arguments)]
async fn rfc5780_tests(
    cfg: &ProbeConfig,
    p: &Prepared,
    m: &StunSocket,
    paddr: SocketAddr,
    other: SocketAddr,
    mapped_i: SocketAddr,
    obs: &mut Observations,
    notes: &mut Vec<String>,
) -> Result<Rfc5780Tests, ProbeError> {
    let (rt, pacer) = (cfg.retransmit, &p.pacer);
    let a2p1 = SocketAddr::new(other.ip(), paddr.port());
    let a2p2 = other;
    let a1p2 = SocketAddr::new(paddr.ip(), other.port());
    let nat = mapped_i != m.local_addr();
    let f = StunSocket::bind(p.bind).await?;
    let h = StunSocket::bind(p.bind).await?;
    let plain = BindingRequest::default();
    let change_both = BindingRequest {
        change_ip: true,
        change_port: true,
        ..Default::default()
    };
    let change_port = BindingRequest {
        change_port: true,
        ..Default::default()
    };
    let mapping_and_check = async {
        let (ii, iii) = tokio::join!(
            m.transact("mapping-II", a2p1, &plain, rt, pacer),
            m.transact("mapping-III", a2p2, &plain, rt, pacer),
        );
        // M has now sent to A2:P2, so its own filter lets A2:P2 in (unless its mapping depends
        // on the destination): a clean look at whether the server honours CHANGE-REQUEST.
        let verify = m
            .transact("server-check", paddr, &change_both, rt, pacer)
            .await;
        (ii, iii, verify)
    };
    let filtering = async {
        tokio::join!(
            f.transact("filtering-I", paddr, &plain, rt, pacer),
            f.transact("filtering-II", paddr, &change_both, rt, pacer),
            f.transact("filtering-III", paddr, &change_port, rt, pacer),
        )
    };
    let hairpin = async {
        if nat {
            Some(
                h.deliver("hairpinning", mapped_i, &plain, m, rt, pacer)
                    .await,
            )
        } else {
            None
        }
    };
    let ((ii, iii, verify), (fi, fii, fiii), hp) =
        tokio::join!(mapping_and_check, filtering, hairpin);

    // Answers must come from where they were asked to.
    let mut server = ServerCheck::Suitable;
    for t in [&ii, &iii] {
        if let (true, Some(from)) = (t.answered(), t.from) {
            if from != t.destination {
                notes.push(format!(
                    "{} answered from {from}, not {} where it was sent",
                    t.name, t.destination
                ));
            }
        }
    }
    if !ii.answered() && !iii.answered() {
        server = ServerCheck::AlternateUnreachable;
    }
    for (t, expected) in [(&verify, a2p2), (&fii, a2p2), (&fiii, a1p2)] {
        match (t.outcome, t.from) {
            ("response", Some(from)) if from != expected => {
                server = ServerCheck::ChangeRequestIgnored {
                    expected,
                    actual: from,
                };
            }
            ("error-response", _) => {
                server = ServerCheck::ChangeRequestRefused {
                    code: t.error_code.unwrap_or(0),
                };
            }
            _ => {}
        }
        if let (Some(origin), Some(from)) = (t.response_origin, t.from) {
            if origin != from {
                notes.push(format!(
                    "{}: RESPONSE-ORIGIN {origin} but the answer came from {from}",
                    t.name
                ));
            }
        }
    }
    if verify.outcome == "timeout" && server == ServerCheck::Suitable {
        notes.push(
            "could not confirm that the server honours CHANGE-REQUEST (the check from the \
             mapping socket got no answer); filtering results assume it does"
                .into(),
        );
    }
    let filter = |t: &Observation| match t.outcome {
        "response" => FilterOutcome::Received,
        "timeout" => FilterOutcome::Blocked,
        _ => FilterOutcome::Invalid,
    };
    for t in [&ii, &iii, &verify, &fi, &fii, &fiii] {
        obs.alg |= t.alg();
    }
    obs.mapped_ii = ii.mapped;
    obs.mapped_iii = iii.mapped;
    obs.filter_ii = Some(filter(&fii));
    obs.filter_iii = Some(filter(&fiii));
    obs.server = Some(server);
    if let Some(a) = fi.mapped {
        if nat && a.ip() == mapped_i.ip() {
            notes.push(format!(
                "two sockets got external ports {} and {} (local {} and {})",
                mapped_i.port(),
                a.port(),
                m.local_addr().port(),
                f.local_addr().port()
            ));
        }
    }
    let hairpinning = hp.as_ref().map(|t| t.outcome == "delivered");
    let mut tests = vec![ii, iii, verify, fi, fii, fiii];
    tests.extend(hp);
    Ok(Rfc5780Tests { hairpinning, tests })
}
