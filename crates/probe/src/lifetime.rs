//! Binding lifetime (RFC 5780 §4.6): socket X makes a mapping and waits; socket Y then asks
//! the server, with RESPONSE-PORT, to answer to X's mapped port. If X hears it, the mapping
//! outlived the wait. The wait grows exponentially until the mapping expires, then a binary
//! search narrows the boundary. Each check uses fresh sockets so no traffic refreshes the
//! mapping under test.

use std::net::SocketAddr;
use std::time::Duration;

use stun::rfc5780::BindingRequest;
use stun::transaction::RetransmitConfig;

use crate::client::{Observation, Pacer, StunSocket};
use crate::run::{ProbeConfig, ProbeError};

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
pub(crate) async fn measure(
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
