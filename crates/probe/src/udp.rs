//! The UDP plan (RFC 5780 §4.3-§4.6). See [`crate::run`] for the sockets and why filtering
//! has one of its own.
//!
//! Test I goes to every server at once. The RFC 5780 tests start as soon as the first server
//! with a usable OTHER-ADDRESS answers (no waiting for slow or silent ones); the other answers
//! are collected meanwhile for the cross-check. If that server then proves unsuitable, the next
//! candidate gets its turn.

use std::collections::HashMap;
use std::net::SocketAddr;

use stun::rfc5780::BindingRequest;
use tokio::task::JoinSet;

use crate::classify::{
    Answer, FilterOutcome, Observations, ServerCheck, ServerEvidence, judge_server,
};
use crate::client::{Observation, StunSocket};
use crate::report::Report;
use crate::run::{Findings, Prepared, ProbeConfig, ProbeError, check_other_address, finish};

pub(crate) async fn run(cfg: &ProbeConfig, mut p: Prepared) -> Result<Report, ProbeError> {
    let rt = cfg.retransmit;
    let m = StunSocket::bind(p.bind).await?;
    let plain = BindingRequest::default();
    let mut notes = vec![];

    let mut pending = JoinSet::new();
    for (slot, (i, a)) in p.targets.iter().enumerate() {
        let name = format!("mapping-I {}", cfg.servers[*i]);
        let (m, pacer, plain, a) = (m.clone(), p.pacer.clone(), plain.clone(), *a);
        pending.spawn(async move { (slot, m.transact(&name, a, &plain, rt, &pacer).await) });
    }
    // Test I results by target slot, and the order they arrived in.
    let mut test_i: HashMap<usize, Observation> = HashMap::new();
    let mut arrival: Vec<usize> = vec![];
    let mut tried: Vec<usize> = vec![];
    let mut chosen: Option<(usize, Rfc5780Tests)> = None;
    let mut hairpin: Option<Observation> = None;
    let mut extra_tests = vec![];

    loop {
        let candidate = arrival.iter().copied().find(|slot| {
            !tried.contains(slot)
                && test_i.get(slot).is_some_and(|o| {
                    o.answered()
                        && check_other_address(o.destination, o.other_address)
                            == ServerCheck::Suitable
                })
        });
        let Some(slot) = candidate else {
            match pending.join_next().await {
                Some(Ok((slot, obs))) => {
                    test_i.insert(slot, obs);
                    arrival.push(slot);
                    continue;
                }
                Some(Err(e)) => return Err(ProbeError::Io(std::io::Error::other(e))),
                None => break,
            }
        };
        tried.push(slot);
        let first = test_i[&slot].clone();
        let (Some(mapped_i), Some(other)) = (first.mapped, first.other_address) else {
            continue;
        };
        let nat = mapped_i != m.local_addr();
        let run_hairpin = nat && hairpin.is_none();
        let (tests, hp, ()) = tokio::join!(
            rfc5780_tests(cfg, &p, &m, first.destination, other, mapped_i),
            async {
                if run_hairpin {
                    Some(hairpinning(cfg, &p, &m, mapped_i).await)
                } else {
                    None
                }
            },
            // Meanwhile, the other servers' answers to test I.
            async {
                while let Some(r) = pending.join_next().await {
                    if let Ok((slot, obs)) = r {
                        test_i.insert(slot, obs);
                        arrival.push(slot);
                    }
                }
            },
        );
        if let Some(h) = hp {
            hairpin = Some(h?);
        }
        let tests = tests?;
        if tests.server == ServerCheck::Suitable {
            if let Some((_, earlier)) = chosen.take() {
                extra_tests.extend(earlier.tests);
            }
            chosen = Some((slot, tests));
            break;
        }
        notes.push(format!(
            "{} is unsuitable for RFC 5780 tests ({}); trying the next server, if any",
            cfg.servers[p.targets[slot].0],
            tests.server.status()
        ));
        if chosen.is_none() {
            chosen = Some((slot, tests));
        } else {
            extra_tests.extend(tests.tests);
        }
    }

    // Record every server's test I, in the user's order.
    let mut all_i: Vec<(usize, Observation)> = test_i.into_iter().collect();
    all_i.sort_by_key(|(slot, _)| *slot);
    let mut responded = false;
    let mut alg = false;
    for (slot, obs) in &all_i {
        let server = p.targets[*slot].0;
        crate::run::record_server(&mut p, server, obs, &mut notes);
        responded |= matches!(obs.outcome, "response" | "error-response");
        alg |= obs.alg();
    }
    // The primary: the RFC 5780 server used, else the first server that answered at all.
    let primary_slot = chosen
        .as_ref()
        .map(|(slot, _)| *slot)
        .or_else(|| all_i.iter().find(|(_, o)| o.answered()).map(|(s, _)| *s));
    let mut obs = Observations {
        local: Some(m.local_addr()),
        responded,
        alg,
        ..Default::default()
    };
    for (slot, o) in &all_i {
        if Some(*slot) == primary_slot {
            obs.primary = Some(o.destination);
            obs.mapped_i = o.mapped;
            obs.server = Some(check_other_address(o.destination, o.other_address));
        } else {
            obs.cross.push((o.destination, o.mapped));
        }
    }
    // Without an RFC 5780 server, hairpinning still only needs test I's mapped address.
    if let (None, Some(mapped_i)) = (&hairpin, obs.mapped_i) {
        if mapped_i != m.local_addr() {
            hairpin = Some(hairpinning(cfg, &p, &m, mapped_i).await?);
        }
    }

    let mut tests: Vec<Observation> = all_i.into_iter().map(|(_, o)| o).collect();
    let mut lifetime = (None, None);
    if let Some((slot, t)) = chosen {
        let paddr = p.targets[slot].1;
        obs.mapped_ii = t.mapped_ii;
        obs.mapped_iii = t.mapped_iii;
        obs.filter_ii = Some(t.filter_ii);
        obs.filter_iii = Some(t.filter_iii);
        obs.alg |= t.alg;
        obs.server = Some(t.server.clone());
        notes.extend(t.notes);
        tests.extend(t.tests);
        tests.append(&mut extra_tests);
        if cfg.lifetime {
            if t.server == ServerCheck::Suitable {
                let l = crate::lifetime::measure(cfg, paddr, p.bind, &p.pacer).await?;
                lifetime = (l.alive_s, l.expired_s);
                tests.extend(l.tests);
                notes.push(l.note);
            } else {
                notes.push("--lifetime needs a suitable RFC 5780 server: not measured".into());
            }
        }
    } else if cfg.lifetime {
        notes.push("--lifetime needs an RFC 5780 server (RESPONSE-PORT): not measured".into());
    }
    let hairpinning = hairpin.as_ref().map(|t| t.outcome == "delivered");
    tests.extend(hairpin);
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

/// RFC 5780 §4.5: a second socket sends to the first one's mapped address.
async fn hairpinning(
    cfg: &ProbeConfig,
    p: &Prepared,
    m: &StunSocket,
    mapped: SocketAddr,
) -> Result<Observation, ProbeError> {
    let h = StunSocket::bind(p.bind).await?;
    let req = BindingRequest::default();
    Ok(
        h.deliver("hairpinning", mapped, &req, m, cfg.retransmit, &p.pacer)
            .await,
    )
}

/// What the RFC 5780 tests against one server established.
#[derive(Debug)]
struct Rfc5780Tests {
    server: ServerCheck,
    mapped_ii: Option<SocketAddr>,
    mapped_iii: Option<SocketAddr>,
    filter_ii: FilterOutcome,
    filter_iii: FilterOutcome,
    alg: bool,
    notes: Vec<String>,
    tests: Vec<Observation>,
}

fn answer(t: &Observation) -> Answer {
    Answer {
        reply: match t.outcome {
            "response" => Some(None),
            "error-response" => Some(Some(t.error_code.unwrap_or(0))),
            _ => None,
        },
        from: t.from,
        origin: t.response_origin,
    }
}

/// Mapping II/III and the server check on M, filtering II/III on a fresh F: all at once.
async fn rfc5780_tests(
    cfg: &ProbeConfig,
    p: &Prepared,
    m: &StunSocket,
    paddr: SocketAddr,
    other: SocketAddr,
    mapped_i: SocketAddr,
) -> Result<Rfc5780Tests, ProbeError> {
    let (rt, pacer) = (cfg.retransmit, &p.pacer);
    let a2p1 = SocketAddr::new(other.ip(), paddr.port());
    let a2p2 = other;
    let a1p2 = SocketAddr::new(paddr.ip(), other.port());
    let f = StunSocket::bind(p.bind).await?;
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
    // The fresh socket sends only to the primary address: its NAT filter has never seen
    // A2 or P2. (Filtering test I, a plain request from F, would add nothing: II and III
    // themselves create F's mapping.)
    let filtering = async {
        tokio::join!(
            f.transact("filtering-II", paddr, &change_both, rt, pacer),
            f.transact("filtering-III", paddr, &change_port, rt, pacer),
        )
    };
    let ((ii, iii, verify), (fii, fiii)) = tokio::join!(mapping_and_check, filtering);

    let (server, mut notes) = judge_server(&ServerEvidence {
        a1p2,
        a2p1,
        a2p2,
        mapping_ii: answer(&ii),
        mapping_iii: answer(&iii),
        verify: answer(&verify),
        filter_ii: answer(&fii),
        filter_iii: answer(&fiii),
    });
    let filter = |t: &Observation| match t.outcome {
        "response" => FilterOutcome::Received,
        "timeout" => FilterOutcome::Blocked,
        _ => FilterOutcome::Invalid,
    };
    let nat = mapped_i != m.local_addr();
    if let Some(x) = fii.mapped.or(fiii.mapped) {
        if nat && x.ip() == mapped_i.ip() {
            notes.push(format!(
                "two sockets got external ports {} and {} (local {} and {})",
                mapped_i.port(),
                x.port(),
                m.local_addr().port(),
                f.local_addr().port()
            ));
        }
    }
    let alg = [&ii, &iii, &verify, &fii, &fiii].iter().any(|t| t.alg());
    Ok(Rfc5780Tests {
        server,
        mapped_ii: ii.mapped,
        mapped_iii: iii.mapped,
        filter_ii: filter(&fii),
        filter_iii: filter(&fiii),
        alg,
        notes,
        tests: vec![ii, iii, verify, fii, fiii],
    })
}
