//! Running a probe: resolve the servers, send test I to all of them, pick the RFC 5780 server,
//! hand over to the UDP plan ([`crate::udp`]) or the TCP one ([`crate::tcp`]), and turn the
//! observations into a [`Report`].
//!
//! Sockets of the UDP plan:
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

use stun::transaction::RetransmitConfig;

use crate::classify::{self, Observations, ServerCheck};
use crate::client::{Observation, Pacer};
use crate::report::{Certainties, Report, ServerReport};

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

/// Everything the plans share: resolved servers, where to bind, the pacer, the clock.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) servers: Vec<ServerReport>,
    /// (index into `servers`, address), all of one family.
    pub(crate) targets: Vec<(usize, SocketAddr)>,
    /// Local IP with port 0: every socket binds here.
    pub(crate) bind: SocketAddr,
    pub(crate) pacer: Pacer,
    pub(crate) started: Instant,
}

/// Run the probe.
pub async fn run(cfg: &ProbeConfig) -> Result<Report, ProbeError> {
    let started = Instant::now();
    let resolved = futures_join_all(cfg.servers.iter().map(|s| resolve(s, cfg.family))).await;
    let mut servers = vec![];
    let mut targets = vec![];
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
    let p = Prepared {
        servers,
        targets,
        bind: SocketAddr::new(local_ip, 0),
        pacer: if cfg.fast {
            Pacer::unlimited()
        } else {
            Pacer::new(10)
        },
        started,
    };
    if cfg.tcp {
        crate::tcp::run(cfg, p).await
    } else {
        crate::udp::run(cfg, p).await
    }
}

/// What test I to every server established.
#[derive(Debug)]
pub(crate) struct Survey {
    /// The server the RFC 5780 tests run against (the first RFC 5780 one that answered, in the
    /// user's order; else the first that answered at all), with its test I.
    pub(crate) primary: Option<(usize, SocketAddr, Observation)>,
    /// The other servers and the mapped address each saw.
    pub(crate) cross: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// Some answer showed MAPPED-ADDRESS != XOR-MAPPED-ADDRESS.
    pub(crate) alg: bool,
    /// Some server answered at all (success or error).
    pub(crate) responded: bool,
}

/// Record what server `i` said to test I (in `p.servers`), with a note when its
/// RESPONSE-ORIGIN contradicts where the answer came from.
pub(crate) fn record_server(
    p: &mut Prepared,
    i: usize,
    obs: &Observation,
    notes: &mut Vec<String>,
) {
    let Some(s) = p.servers.get_mut(i) else {
        return;
    };
    s.answered = obs.answered();
    s.mapped = obs.mapped.map(|m| m.to_string());
    s.software = obs.software.clone();
    s.rfc5780 = obs.other_address.is_some();
    s.error = match obs.outcome {
        "error-response" => Some(format!(
            "{} {}",
            crate::report::ANSWERED_WITH_ERROR,
            obs.error_code.unwrap_or(0)
        )),
        "timeout" => Some(format!("no answer to {} requests", obs.sends)),
        _ => obs.detail.clone(),
    };
    if let (Some(origin), Some(from)) = (obs.response_origin, obs.from) {
        if origin != from {
            notes.push(format!(
                "{}: RESPONSE-ORIGIN says {origin} but the answer came from {from} (the server \
                 is misconfigured or behind a NAT itself)",
                s.name
            ));
        }
    }
}

/// Record test I answers per server and choose the primary: the first RFC 5780 server that
/// answered, in the user's order; else the first that answered at all.
pub(crate) fn survey(p: &mut Prepared, test_i: &[Observation], notes: &mut Vec<String>) -> Survey {
    let mut primary: Option<(usize, SocketAddr, Observation)> = None;
    let mut cross = vec![];
    let mut alg = false;
    let mut responded = false;
    let targets = p.targets.clone();
    for ((i, a), obs) in targets.iter().zip(test_i) {
        record_server(p, *i, obs, notes);
        alg |= obs.alg();
        responded |= matches!(obs.outcome, "response" | "error-response");
        if primary.is_none() && obs.answered() && obs.other_address.is_some() {
            primary = Some((*i, *a, obs.clone()));
        } else {
            cross.push((*a, obs.mapped));
        }
    }
    if primary.is_none() {
        if let Some(pos) = cross.iter().position(|(_, m)| m.is_some()) {
            let (a, _) = cross.remove(pos);
            let found = targets.iter().zip(test_i).find(|((_, x), _)| *x == a);
            if let Some(((i, _), obs)) = found {
                primary = Some((*i, a, obs.clone()));
            }
        }
    }
    Survey {
        primary,
        cross,
        alg,
        responded,
    }
}

/// The RFC 5780 checks that test I alone can make: OTHER-ADDRESS present and different from
/// the primary in both address and port.
pub(crate) fn check_other_address(primary: SocketAddr, other: Option<SocketAddr>) -> ServerCheck {
    match other {
        None => ServerCheck::NoOtherAddress,
        Some(o) if o.ip() == primary.ip() || o.port() == primary.port() => {
            ServerCheck::OtherAddressNotDistinct { primary, other: o }
        }
        Some(_) => ServerCheck::Suitable,
    }
}

/// What a plan hands back for the report.
#[derive(Debug)]
pub(crate) struct Findings {
    pub(crate) transport: &'static str,
    pub(crate) local: SocketAddr,
    pub(crate) obs: Observations,
    pub(crate) hairpinning: Option<bool>,
    /// (longest wait the mapping survived, shortest after which it had expired).
    pub(crate) lifetime: (Option<f64>, Option<f64>),
    pub(crate) tests: Vec<Observation>,
    pub(crate) notes: Vec<String>,
}

/// Classify and assemble the report.
pub(crate) fn finish(p: Prepared, f: Findings) -> Report {
    let c = classify::classify(&f.obs);
    let mut notes = f.notes;
    notes.extend(c.notes.iter().cloned());
    // Over TCP "nothing answered" says nothing about UDP.
    let tcp_blocked = f.transport == "tcp" && c.udp_blocked;
    if tcp_blocked {
        notes.retain(|n| !n.contains("UDP is blocked"));
        notes.push(
            "no server answered over TCP: TCP to these servers is blocked, or they are down".into(),
        );
    }
    if f.hairpinning == Some(false)
        && matches!(
            c.filtering,
            classify::Behaviour::AddressDependent | classify::Behaviour::AddressAndPortDependent
        )
    {
        notes.push(
            "hairpinning was not observed; behind address-dependent filtering a NAT may still \
             hairpin flows whose target has already sent to the sender's external address \
             (the RFC 5780 test uses a fresh socket)"
                .into(),
        );
    }
    let port_preservation = match (c.nat, f.obs.mapped_i) {
        (Some(true), Some(m)) => Some(m.port() == f.local.port()),
        _ => None,
    };
    Report {
        schema_version: 1,
        server: f.obs.primary.map(|a| a.to_string()),
        local: Some(f.local.to_string()),
        mapped: f.obs.mapped_i.map(|a| a.to_string()),
        transport: f.transport,
        nat: c.nat,
        udp_blocked: c.udp_blocked && !tcp_blocked,
        rfc5780: f.obs.server.as_ref().is_some_and(ServerCheck::is_suitable),
        mapping: c.mapping.as_str(),
        filtering: c.filtering.as_str(),
        hairpinning: f.hairpinning,
        port_preservation,
        binding_lifetime_s: f.lifetime.0,
        binding_lifetime_expired_s: f.lifetime.1,
        alg_detected: f.obs.alg,
        legacy: if tcp_blocked { "tcp-blocked" } else { c.legacy },
        certainty: Certainties {
            mapping: c.mapping_certainty,
            filtering: c.filtering_certainty,
        },
        server_check: f.obs.server,
        servers: p.servers,
        notes,
        tests: f.tests,
        elapsed_ms: u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
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
