//! Mapping tests over TCP (RFC 5780 §4.3 with TCP; §3: filtering, hairpinning and lifetime
//! are UDP-only). Every connection is made from the same local port (SO_REUSEADDR and
//! SO_REUSEPORT), which is what a TCP mapping comparison needs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::rfc5780::{BindingRequest, BindingResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{Observations, ServerCheck};
use crate::client::Observation;
use crate::report::Report;
use crate::run::{
    Findings, Prepared, ProbeConfig, ProbeError, check_other_address, finish, futures_join_all,
    survey,
};

pub(crate) async fn run(cfg: &ProbeConfig, mut p: Prepared) -> Result<Report, ProbeError> {
    // Reserve a local port: bind once, keep the number, release it for the tests to share.
    let port = std::net::TcpListener::bind(p.bind)?.local_addr()?.port();
    let local = SocketAddr::new(p.bind.ip(), port);
    let mut notes = vec![
        "TCP mode: only the mapping tests run over TCP; filtering, hairpinning and binding \
         lifetime are UDP-only (RFC 5780 §3)"
            .to_owned(),
    ];
    let test_i = futures_join_all(p.targets.iter().map(|(i, a)| {
        let name = format!("tcp-mapping-I {}", cfg.servers[*i]);
        let a = *a;
        async move { binding(&name, local, a).await }
    }))
    .await;
    let s = survey(&mut p, &test_i, &mut notes);
    let mut tests = test_i;
    let mut obs = Observations {
        local: Some(local),
        cross: s.cross,
        alg: s.alg,
        responded: s.responded,
        ..Default::default()
    };
    if let Some((_, paddr, first)) = s.primary {
        obs.primary = Some(paddr);
        obs.mapped_i = first.mapped;
        let check = check_other_address(paddr, first.other_address);
        obs.server = Some(check.clone());
        if let (ServerCheck::Suitable, Some(other)) = (check, first.other_address) {
            let a2p1 = SocketAddr::new(other.ip(), paddr.port());
            let (ii, iii) = tokio::join!(
                binding("tcp-mapping-II", local, a2p1),
                binding("tcp-mapping-III", local, other),
            );
            if !ii.answered() && !iii.answered() {
                obs.server = Some(ServerCheck::AlternateUnreachable);
            }
            obs.alg |= ii.alg() || iii.alg();
            obs.mapped_ii = ii.mapped;
            obs.mapped_iii = iii.mapped;
            tests.extend([ii, iii]);
        }
    }
    let findings = Findings {
        transport: "tcp",
        local,
        obs,
        hairpinning: None,
        lifetime: (None, None),
        tests,
        notes,
    };
    Ok(finish(p, findings))
}

/// One Binding over a fresh TCP connection from `local` (SO_REUSEADDR/SO_REUSEPORT so every
/// test can use the same local port, which is what a TCP mapping test compares).
async fn binding(name: &str, local: SocketAddr, dest: SocketAddr) -> Observation {
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
