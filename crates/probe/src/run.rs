//! The RFC 5780 test plan, run concurrently where tests are independent.
//!
//! Sockets:
//! - **M** (mapping): test I to every server (cross-check), mapping tests II and III, and a
//!   CHANGE-REQUEST sent only after M has talked to the alternate address, to verify the server
//!   honours CHANGE-REQUEST without our own NAT's filtering getting in the way.
//! - **F** (filtering): a fresh socket that never sends to the alternate address, so the
//!   filtering tests see the NAT's filter as a stranger would (§4.4). Running them on M would
//!   report address-dependent filtering as endpoint-independent.
//! - **H** (hairpin): sends to M's mapped address; M must receive it (§4.5).
//! - **X/Y** (lifetime, opt-in): X creates a mapping, waits, Y asks the server to answer to X's
//!   mapped port with RESPONSE-PORT (§4.6); binary search on the wait.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use stun::rfc5780::{BindingRequest, BindingResponse};
use stun::transaction::RetransmitConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{self, Behaviour, Certainty, FilterOutcome, Observations, ServerCheck};
use crate::client::{Observation, Pacer, StunSocket};

/// Address family restriction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// Whatever the first server resolves to.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Servers as given ("host", "host:port", "ip:port", "[v6]:port").
    pub servers: Vec<String>,
    /// Address family.
    pub family: Family,
    /// Mapping tests over TCP instead of UDP.
    pub tcp: bool,
    /// Run the binding lifetime search.
    pub lifetime: bool,
    /// Longest lifetime tried.
    pub lifetime_max: Duration,
    /// Lifetime search resolution.
    pub lifetime_resolution: Duration,
    /// No pacing (own server).
    pub fast: bool,
    /// Retransmission schedule.
    pub retransmit: RetransmitConfig,
    /// Local IP to bind, instead of the one the kernel would use.
    pub bind: Option<IpAddr>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            servers: vec![],
            family: Family::Any,
            tcp: false,
            lifetime: false,
            lifetime_max: Duration::from_secs(300),
            lifetime_resolution: Duration::from_secs(1),
            fast: false,
            retransmit: RetransmitConfig::DIAGNOSTIC,
            bind: None,
        }
    }
}

/// Errors that stop the probe before any test.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No server name resolved.
    #[error("{0}")]
    Resolve(String),
    /// No local address could reach the servers.
    #[error("{0}")]
    NoRoute(String),
    /// A socket could not be created.
    #[error("cannot open a socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One server and what it said to test I.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// As given.
    pub name: String,
    /// Resolved address used.
    pub address: Option<String>,
    /// Answered test I.
    pub answered: bool,
    /// Sent OTHER-ADDRESS.
    pub rfc5780: bool,
    /// Mapped address it saw.
    pub mapped: Option<String>,
    /// SOFTWARE.
    pub software: Option<String>,
    /// Why it was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How sure each conclusion is.
#[derive(Debug, Clone, Serialize)]
pub struct Certainties {
    /// Mapping.
    pub mapping: Certainty,
    /// Filtering.
    pub filtering: Certainty,
}

/// The result; its JSON form is the documented `--json` schema (see README).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Schema version.
    pub schema_version: u32,
    /// The server the RFC 5780 tests ran against, "ip:port".
    pub server: Option<String>,
    /// Local address of the mapping socket, "ip:port".
    pub local: Option<String>,
    /// Mapped (server-reflexive) address, "ip:port".
    pub mapped: Option<String>,
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// A NAT is present.
    pub nat: Option<bool>,
    /// No answer at all.
    pub udp_blocked: bool,
    /// The server used passed the RFC 5780 checks.
    pub rfc5780: bool,
    /// RFC 4787 mapping.
    pub mapping: &'static str,
    /// RFC 4787 filtering.
    pub filtering: &'static str,
    /// Hairpinning works (null: not tested or not applicable).
    pub hairpinning: Option<bool>,
    /// The NAT kept the local port.
    pub port_preservation: Option<bool>,
    /// Binding lifetime in seconds (null unless `--lifetime`).
    pub binding_lifetime_s: Option<f64>,
    /// MAPPED-ADDRESS differed from XOR-MAPPED-ADDRESS.
    pub alg_detected: bool,
    /// RFC 3489 name, derived.
    pub legacy: &'static str,
    /// How sure mapping and filtering are.
    pub certainty: Certainties,
    /// The RFC 5780 server checks.
    pub server_check: Option<ServerCheck>,
    /// Every server tried.
    pub servers: Vec<ServerReport>,
    /// Explanations, bounds, warnings.
    pub notes: Vec<String>,
    /// Every test run, in order.
    pub tests: Vec<Observation>,
    /// Wall time of the whole probe.
    pub elapsed_ms: u64,
}

impl Report {
    /// At least one server answered: the result means something.
    pub fn usable(&self) -> bool {
        !self.udp_blocked
    }
}

fn split_host_port(s: &str) -> (String, u16) {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return (a.ip().to_string(), a.port());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return (ip.to_string(), 3478);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_owned(), port),
            Err(_) => (s.to_owned(), 3478),
        },
        _ => (s.trim_matches(['[', ']']).to_owned(), 3478),
    }
}

async fn resolve(name: &str, family: Family) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(name);
    let addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut v: Vec<SocketAddr> = addrs.collect();
    v.retain(|a| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    });
    // Prefer IPv4 when unrestricted: IPv6 rarely has NAT, and users usually ask about IPv4.
    v.sort_by_key(|a| a.is_ipv6());
    v.first().copied().ok_or_else(|| {
        let fam = match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
            Family::Any => "any",
        };
        format!("{host} has no {fam} address")
    })
}

/// The local IP the kernel would use towards `dest` (connect a UDP socket; nothing is sent).
fn local_ip_towards(dest: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(dest)?;
    Ok(s.local_addr()?.ip())
}

/// Run the probe.
pub async fn run(cfg: &ProbeConfig) -> Result<Report, ProbeError> {
    let started = Instant::now();
    let pacer = if cfg.fast {
        Pacer::unlimited()
    } else {
        Pacer::new(10)
    };
    let rt = cfg.retransmit;

    // Resolve every server, concurrently.
    let resolved = futures_join_all(cfg.servers.iter().map(|s| resolve(s, cfg.family))).await;
    let mut servers: Vec<ServerReport> = vec![];
    let mut targets: Vec<(usize, SocketAddr)> = vec![];
    for (i, (name, r)) in cfg.servers.iter().zip(resolved).enumerate() {
        let (address, error) = match r {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        };
        servers.push(ServerReport {
            name: name.clone(),
            address: address.map(|a| a.to_string()),
            answered: false,
            rfc5780: false,
            mapped: None,
            software: None,
            error,
        });
        if let Some(a) = address {
            targets.push((i, a));
        }
    }
    let Some(&(_, first)) = targets.first() else {
        let why: Vec<String> = servers.iter().filter_map(|s| s.error.clone()).collect();
        return Err(ProbeError::Resolve(format!(
            "no server could be resolved ({}). Check the names and your DNS, or give an IP \
             address (e.g. natprobe 192.0.2.1:3478)",
            why.join("; ")
        )));
    };
    // One family for the whole run: the first resolved server's.
    targets.retain(|(i, a)| {
        let same = a.is_ipv4() == first.is_ipv4();
        if !same {
            servers[*i].error = Some("other address family than the first server".into());
        }
        same
    });
    let local_ip = match cfg.bind {
        Some(ip) => ip,
        None => local_ip_towards(first).map_err(|e| {
            ProbeError::NoRoute(format!(
                "no route to {first}: {e}. Check your network connection, or try -4/-6"
            ))
        })?,
    };
    let bind = SocketAddr::new(local_ip, 0);

    if cfg.tcp {
        return run_tcp(cfg, servers, targets, bind, started).await;
    }

    let m = StunSocket::bind(bind).await?;
    let mut tests: Vec<Observation> = vec![];
    let mut notes: Vec<String> = vec![];

    // Test I to every server at once, from M.
    let plain = BindingRequest::default();
    let test_i = futures_join_all(targets.iter().map(|(i, a)| {
        let name = format!("mapping-I {}", cfg.servers[*i]);
        let m = m.clone();
        let pacer = pacer.clone();
        let plain = plain.clone();
        let a = *a;
        async move { m.transact(&name, a, &plain, rt, &pacer).await }
    }))
    .await;
    let mut primary: Option<(usize, SocketAddr, Observation)> = None;
    let mut cross = vec![];
    let mut alg = false;
    for ((i, a), obs) in targets.iter().zip(&test_i) {
        let s = &mut servers[*i];
        s.answered = obs.answered();
        s.mapped = obs.mapped.map(|m| m.to_string());
        s.software = obs.software.clone();
        s.rfc5780 = obs.other_address.is_some();
        if obs.outcome == "error-response" {
            s.error = Some(format!("answered test I with error {:?}", obs.error_code));
        }
        alg |= obs.alg();
        if let (Some(origin), Some(from)) = (obs.response_origin, obs.from) {
            if origin != from {
                notes.push(format!(
                    "{}: RESPONSE-ORIGIN says {origin} but the answer came from {from} (the \
                     server is misconfigured or behind a NAT itself)",
                    s.name
                ));
            }
        }
        let pick = obs.answered() && obs.other_address.is_some() && primary.is_none();
        if pick {
            primary = Some((*i, *a, obs.clone()));
        } else {
            cross.push((*a, obs.mapped));
        }
    }
    tests.extend(test_i.iter().cloned());
    if primary.is_none() {
        // No RFC 5780 server: the first server that answered anchors the comparison.
        if let Some(pos) = cross.iter().position(|(_, m)| m.is_some()) {
            let (a, _) = cross.remove(pos);
            if let Some(((i, _), obs)) = targets.iter().zip(&test_i).find(|((_, x), _)| *x == a) {
                primary = Some((*i, a, obs.clone()));
            }
        }
    }

    let mut obs = Observations {
        local: Some(m.local_addr()),
        cross,
        alg,
        ..Default::default()
    };
    let mut hairpinning = None;
    let mut lifetime = None;
    if let Some((pi, paddr, ref first_obs)) = primary {
        obs.primary = Some(paddr);
        obs.mapped_i = first_obs.mapped;
        let check = match first_obs.other_address {
            None => ServerCheck::NoOtherAddress,
            Some(o) if o.ip() == paddr.ip() || o.port() == paddr.port() => {
                ServerCheck::OtherAddressNotDistinct {
                    primary: paddr,
                    other: o,
                }
            }
            Some(_) => ServerCheck::Suitable,
        };
        obs.server = Some(check.clone());
        let nat = first_obs.mapped.map(|x| x != m.local_addr());

        if let (ServerCheck::Suitable, Some(other), Some(mapped_i)) =
            (&check, first_obs.other_address, first_obs.mapped)
        {
            let a2p1 = SocketAddr::new(other.ip(), paddr.port());
            let a2p2 = other;
            let a1p2 = SocketAddr::new(paddr.ip(), other.port());
            let f = StunSocket::bind(bind).await?;
            let h = StunSocket::bind(bind).await?;
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
                    m.transact("mapping-II", a2p1, &plain, rt, &pacer),
                    m.transact("mapping-III", a2p2, &plain, rt, &pacer),
                );
                // M has now sent to A2:P2, so its own filter lets A2:P2 in (unless mapping
                // depends on the destination): a clean look at whether CHANGE-REQUEST works.
                let verify = m
                    .transact("server-check", paddr, &change_both, rt, &pacer)
                    .await;
                (ii, iii, verify)
            };
            let filtering = async {
                tokio::join!(
                    f.transact("filtering-I", paddr, &plain, rt, &pacer),
                    f.transact("filtering-II", paddr, &change_both, rt, &pacer),
                    f.transact("filtering-III", paddr, &change_port, rt, &pacer),
                )
            };
            let hairpin = async {
                if nat == Some(true) {
                    Some(
                        h.deliver("hairpinning", mapped_i, &plain, &m, rt, &pacer)
                            .await,
                    )
                } else {
                    None
                }
            };
            let ((ii, iii, verify), (fi, fii, fiii), hp) =
                tokio::join!(mapping_and_check, filtering, hairpin);

            // Server checks: answers must come from where they were asked to.
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
                    "could not confirm that the server honours CHANGE-REQUEST (the check from \
                     the mapping socket got no answer); filtering results assume it does"
                        .into(),
                );
            }
            for t in [&ii, &iii, &verify, &fi, &fii, &fiii] {
                obs.alg |= t.alg();
            }
            let fo = |t: &Observation| match t.outcome {
                "response" => FilterOutcome::Received,
                "timeout" => FilterOutcome::Blocked,
                _ => FilterOutcome::Invalid,
            };
            obs.mapped_ii = ii.mapped;
            obs.mapped_iii = iii.mapped;
            obs.filter_ii = Some(fo(&fii));
            obs.filter_iii = Some(fo(&fiii));
            obs.server = Some(server.clone());
            if let (Some(a), b) = (fi.mapped, mapped_i) {
                if nat == Some(true) && a.ip() == b.ip() {
                    notes.push(format!(
                        "two sockets got external ports {} and {} (local {} and {})",
                        b.port(),
                        a.port(),
                        m.local_addr().port(),
                        f.local_addr().port()
                    ));
                }
            }
            hairpinning = hp.as_ref().map(|t| t.outcome == "delivered");
            tests.extend([ii, iii, verify, fi, fii, fiii]);
            tests.extend(hp);

            if cfg.lifetime {
                let (l, mut t, note) = binding_lifetime(cfg, paddr, bind, &pacer).await?;
                lifetime = l;
                tests.append(&mut t);
                notes.push(note);
            }
        } else if cfg.lifetime {
            notes.push(format!(
                "--lifetime needs an RFC 5780 server (RESPONSE-PORT); {} is not usable for it",
                servers[pi].name
            ));
        }
    }

    let c = classify::classify(&obs);
    notes.extend(c.notes.iter().cloned());
    let port_preservation = match (c.nat, obs.mapped_i) {
        (Some(true), Some(mp)) => Some(mp.port() == m.local_addr().port()),
        _ => None,
    };
    let suitable = obs.server.as_ref().is_some_and(ServerCheck::is_suitable);
    Ok(Report {
        schema_version: 1,
        server: obs.primary.map(|a| a.to_string()),
        local: Some(m.local_addr().to_string()),
        mapped: obs.mapped_i.map(|a| a.to_string()),
        transport: "udp",
        nat: c.nat,
        udp_blocked: c.udp_blocked,
        rfc5780: suitable,
        mapping: c.mapping.as_str(),
        filtering: c.filtering.as_str(),
        hairpinning,
        port_preservation,
        binding_lifetime_s: lifetime,
        alg_detected: obs.alg,
        legacy: c.legacy,
        certainty: Certainties {
            mapping: c.mapping_certainty,
            filtering: c.filtering_certainty,
        },
        server_check: obs.server.clone(),
        servers,
        notes,
        tests,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// RFC 5780 §4.6: does a mapping made `wait` ago still exist?
async fn mapping_alive(
    server: SocketAddr,
    bind: SocketAddr,
    wait: Duration,
    rt: RetransmitConfig,
    pacer: &Pacer,
    tests: &mut Vec<Observation>,
) -> Result<Option<bool>, ProbeError> {
    let x = StunSocket::bind(bind).await?;
    let y = StunSocket::bind(bind).await?;
    let first = x
        .transact(
            "lifetime-create",
            server,
            &BindingRequest::default(),
            rt,
            pacer,
        )
        .await;
    let Some(mapped) = first.mapped else {
        tests.push(first);
        return Ok(None);
    };
    tests.push(first);
    tokio::time::sleep(wait).await;
    let req = BindingRequest {
        response_port: Some(mapped.port()),
        ..Default::default()
    };
    let mut probe = y
        .deliver(
            &format!("lifetime-check after {:.1}s", wait.as_secs_f64()),
            server,
            &req,
            &x,
            rt,
            pacer,
        )
        .await;
    let alive = probe.outcome == "delivered";
    probe.name = format!(
        "{} -> {}",
        probe.name,
        if alive { "alive" } else { "expired" }
    );
    tests.push(probe);
    Ok(Some(alive))
}

/// Grow the wait exponentially until the mapping expires, then binary-search the boundary.
async fn binding_lifetime(
    cfg: &ProbeConfig,
    server: SocketAddr,
    bind: SocketAddr,
    pacer: &Pacer,
) -> Result<(Option<f64>, Vec<Observation>, String), ProbeError> {
    let rt = cfg.retransmit;
    let mut tests = vec![];
    let res = cfg.lifetime_resolution.max(Duration::from_millis(100));
    let mut lo = Duration::ZERO;
    let mut hi = None;
    let mut t = Duration::from_secs(1).min(cfg.lifetime_max);
    while t <= cfg.lifetime_max {
        match mapping_alive(server, bind, t, rt, pacer, &mut tests).await? {
            Some(true) => lo = t,
            Some(false) => {
                hi = Some(t);
                break;
            }
            None => return Ok((None, tests, "lifetime: the server stopped answering".into())),
        }
        if t == cfg.lifetime_max {
            break;
        }
        t = (t * 2).min(cfg.lifetime_max);
    }
    let Some(mut hi) = hi else {
        return Ok((
            Some(lo.as_secs_f64()),
            tests,
            format!(
                "binding lifetime: still alive after {:.0} s (the longest tried; raise \
                 --lifetime-max)",
                lo.as_secs_f64()
            ),
        ));
    };
    while hi.saturating_sub(lo) > res {
        let mid = (lo + hi) / 2;
        match mapping_alive(server, bind, mid, rt, pacer, &mut tests).await? {
            Some(true) => lo = mid,
            Some(false) => hi = mid,
            None => break,
        }
    }
    Ok((
        Some(lo.as_secs_f64()),
        tests,
        format!(
            "binding lifetime: alive after {:.1} s, expired after {:.1} s",
            lo.as_secs_f64(),
            hi.as_secs_f64()
        ),
    ))
}

/// One Binding over a fresh TCP connection from `local` (SO_REUSEADDR/SO_REUSEPORT so every
/// test can use the same local port, which is what a TCP mapping test compares).
async fn tcp_binding(name: &str, local: SocketAddr, dest: SocketAddr) -> Observation {
    let req = BindingRequest::default();
    let mut obs = Observation::new(name, local, dest, &req);
    obs.sends = 1;
    let started = Instant::now();
    let r = async {
        let sock = if dest.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(local)?;
        let mut s = sock.connect(dest).await?;
        let id = stun::transaction::new_transaction_id();
        let bytes = req
            .encode(&id)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        s.write_all(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if let Some(len) = stun::wire::frame_len(&buf[..have]) {
                if len > buf.len() {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                if have >= len {
                    return BindingResponse::parse(&buf[..len])
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
            }
            if have == buf.len() {
                return Err::<BindingResponse, _>(std::io::ErrorKind::InvalidData.into());
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), r).await {
        Ok(Ok(b)) => {
            obs.from = Some(dest);
            obs.rtt_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            obs.record(&b);
        }
        Ok(Err(e)) => {
            obs.outcome = "io-error";
            obs.detail = Some(e.to_string());
        }
        Err(_) => {}
    }
    obs
}

async fn run_tcp(
    cfg: &ProbeConfig,
    mut servers: Vec<ServerReport>,
    targets: Vec<(usize, SocketAddr)>,
    bind: SocketAddr,
    started: Instant,
) -> Result<Report, ProbeError> {
    // Reserve a local port: bind once, keep the port, release it for the tests to share.
    let port = {
        let l = std::net::TcpListener::bind(bind)?;
        l.local_addr()?.port()
    };
    let local = SocketAddr::new(bind.ip(), port);
    let mut tests = vec![];
    let test_i =
        futures_join_all(targets.iter().map(|(i, a)| {
            tcp_binding_owned(format!("tcp-mapping-I {}", cfg.servers[*i]), local, *a)
        }))
        .await;
    let mut primary = None;
    let mut cross = vec![];
    for ((i, a), t) in targets.iter().zip(&test_i) {
        let s = &mut servers[*i];
        s.answered = t.answered();
        s.mapped = t.mapped.map(|m| m.to_string());
        s.software = t.software.clone();
        s.rfc5780 = t.other_address.is_some();
        s.error = t.detail.clone();
        if primary.is_none() && t.answered() && t.other_address.is_some() {
            primary = Some((*a, t.clone()));
        } else {
            cross.push((*a, t.mapped));
        }
    }
    tests.extend(test_i.iter().cloned());
    let mut obs = Observations {
        local: Some(local),
        cross,
        ..Default::default()
    };
    let mut notes = vec![
        "TCP mode: only the mapping tests run over TCP; filtering, hairpinning and binding \
         lifetime are UDP-only (RFC 5780 §3)"
            .to_owned(),
    ];
    if primary.is_none() {
        if let Some(pos) = obs.cross.iter().position(|(_, m)| m.is_some()) {
            let (a, _) = obs.cross.remove(pos);
            if let Some(t) = test_i.iter().find(|t| t.destination == a) {
                primary = Some((a, t.clone()));
            }
        }
    }
    if let Some((paddr, t)) = &primary {
        obs.primary = Some(*paddr);
        obs.mapped_i = t.mapped;
        obs.alg = test_i.iter().any(Observation::alg);
        match t.other_address {
            Some(o) if o.ip() != paddr.ip() && o.port() != paddr.port() => {
                let a2p1 = SocketAddr::new(o.ip(), paddr.port());
                let (ii, iii) = tokio::join!(
                    tcp_binding("tcp-mapping-II", local, a2p1),
                    tcp_binding("tcp-mapping-III", local, o),
                );
                obs.mapped_ii = ii.mapped;
                obs.mapped_iii = iii.mapped;
                obs.server = Some(if ii.answered() || iii.answered() {
                    ServerCheck::Suitable
                } else {
                    ServerCheck::AlternateUnreachable
                });
                tests.extend([ii, iii]);
            }
            Some(o) => {
                obs.server = Some(ServerCheck::OtherAddressNotDistinct {
                    primary: *paddr,
                    other: o,
                })
            }
            None => obs.server = Some(ServerCheck::NoOtherAddress),
        }
    }
    let c = classify::classify(&obs);
    notes.extend(c.notes.iter().cloned());
    // Filtering is not tested over TCP: never report it as a bound from the UDP logic.
    let port_preservation = match (c.nat, obs.mapped_i) {
        (Some(true), Some(mp)) => Some(mp.port() == port),
        _ => None,
    };
    let mapping_ok = obs.server.as_ref().is_some_and(ServerCheck::is_suitable);
    Ok(Report {
        schema_version: 1,
        server: obs.primary.map(|a| a.to_string()),
        local: Some(local.to_string()),
        mapped: obs.mapped_i.map(|a| a.to_string()),
        transport: "tcp",
        nat: c.nat,
        udp_blocked: c.udp_blocked,
        rfc5780: mapping_ok,
        mapping: c.mapping.as_str(),
        filtering: Behaviour::Unknown.as_str(),
        hairpinning: None,
        port_preservation,
        binding_lifetime_s: None,
        alg_detected: obs.alg,
        legacy: classify::legacy_name(c.nat, c.mapping, Behaviour::Unknown),
        certainty: Certainties {
            mapping: c.mapping_certainty,
            filtering: Certainty::None,
        },
        server_check: obs.server.clone(),
        servers,
        notes,
        tests,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

async fn tcp_binding_owned(name: String, local: SocketAddr, dest: SocketAddr) -> Observation {
    tcp_binding(&name, local, dest).await
}

/// Join futures concurrently, keeping order (a tiny `join_all` without another dependency).
pub(crate) async fn futures_join_all<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("stun.example.org"),
            ("stun.example.org".into(), 3478)
        );
        assert_eq!(
            split_host_port("stun.example.org:19302"),
            ("stun.example.org".into(), 19302)
        );
        assert_eq!(
            split_host_port("192.0.2.1:5000"),
            ("192.0.2.1".into(), 5000)
        );
        assert_eq!(split_host_port("192.0.2.1"), ("192.0.2.1".into(), 3478));
        assert_eq!(
            split_host_port("[2001:db8::1]:5000"),
            ("2001:db8::1".into(), 5000)
        );
        assert_eq!(split_host_port("2001:db8::1"), ("2001:db8::1".into(), 3478));
    }
}
