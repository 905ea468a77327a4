//! Binding lifetime (RFC 5780 §4.6): socket X makes a mapping and waits; socket Y then asks
//! the server, with RESPONSE-PORT, to answer to X's mapped port. If X hears it, the mapping
//! outlived the wait. Each check uses fresh sockets, so no traffic refreshes the mapping under
//! test.
//!
//! First a control check with no wait: if even that is not delivered, the server (or the path)
//! does not do RESPONSE-PORT and nothing can be measured. Then waits of 1, 2, 4 ... seconds up
//! to `--lifetime-max` run *in parallel* (§4.6 allows concurrent tests; they use separate
//! mappings), which brackets the lifetime in about the time of the shortest expiry; a binary
//! search then narrows the bracket to `--lifetime-resolution`.

use std::net::SocketAddr;
use std::time::Duration;

use stun::rfc5780::BindingRequest;
use stun::transaction::RetransmitConfig;

use crate::client::{Observation, Pacer, StunSocket};
use crate::run::{ProbeConfig, ProbeError, futures_join_all};

/// The measurement.
#[derive(Debug)]
pub(crate) struct Lifetime {
    /// Longest wait the mapping survived.
    pub(crate) alive_s: Option<f64>,
    /// Shortest wait after which it had expired; `None` if it never did.
    pub(crate) expired_s: Option<f64>,
    pub(crate) tests: Vec<Observation>,
    pub(crate) note: String,
}

/// Does a mapping made `wait` ago still exist? `None`: the check could not be made (the
/// server stopped answering test I).
async fn mapping_alive(
    server: SocketAddr,
    bind: SocketAddr,
    wait: Duration,
    rt: RetransmitConfig,
    pacer: &Pacer,
) -> Result<(Option<bool>, Vec<Observation>), ProbeError> {
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
        return Ok((None, vec![first]));
    };
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
    Ok((Some(alive), vec![first, probe]))
}

pub(crate) async fn measure(
    cfg: &ProbeConfig,
    server: SocketAddr,
    bind: SocketAddr,
    pacer: &Pacer,
) -> Result<Lifetime, ProbeError> {
    let rt = cfg.retransmit;
    let mut tests = vec![];
    let unmeasured = |tests, note: &str| Lifetime {
        alive_s: None,
        expired_s: None,
        tests,
        note: note.to_owned(),
    };

    let (control, t) = mapping_alive(server, bind, Duration::ZERO, rt, pacer).await?;
    tests.extend(t);
    match control {
        Some(true) => {}
        Some(false) => {
            return Ok(unmeasured(
                tests,
                "binding lifetime not measured: even with no wait the server's RESPONSE-PORT \
                 answer never reached the mapping (the server refuses RESPONSE-PORT, or the NAT \
                 filters answers to another port's request)",
            ));
        }
        None => {
            return Ok(unmeasured(
                tests,
                "binding lifetime not measured: the server stopped answering",
            ));
        }
    }

    // Exponential waits, all at once.
    let max = cfg.lifetime_max.max(Duration::from_secs(1));
    let mut waits = vec![];
    let mut w = Duration::from_secs(1);
    while w < max {
        waits.push(w);
        w = w.saturating_mul(2);
    }
    waits.push(max);
    let results = futures_join_all(
        waits
            .iter()
            .map(|w| mapping_alive(server, bind, *w, rt, pacer)),
    )
    .await;
    let mut lo = Duration::ZERO;
    let mut hi: Option<Duration> = None;
    for (w, r) in waits.iter().zip(results) {
        let (alive, t) = r?;
        tests.extend(t);
        match alive {
            Some(true) if hi.is_none_or(|h| *w < h) => lo = lo.max(*w),
            Some(false) => hi = Some(hi.map_or(*w, |h| h.min(*w))),
            _ => {}
        }
    }
    let Some(mut hi) = hi else {
        return Ok(Lifetime {
            alive_s: Some(lo.as_secs_f64()),
            expired_s: None,
            tests,
            note: format!(
                "binding lifetime: still alive after {:.0} s, the longest tried (raise \
                 --lifetime-max)",
                lo.as_secs_f64()
            ),
        });
    };
    // A mapping that survived a longer wait than one that expired: the NAT is not monotonic
    // (e.g. refreshes on inbound traffic); keep the bracket consistent.
    lo = lo.min(hi);
    let res = cfg.lifetime_resolution.max(Duration::from_millis(100));
    while hi.saturating_sub(lo) > res {
        let mid = (lo + hi) / 2;
        let (alive, t) = mapping_alive(server, bind, mid, rt, pacer).await?;
        tests.extend(t);
        match alive {
            Some(true) => lo = mid,
            Some(false) => hi = mid,
            None => break,
        }
    }
    Ok(Lifetime {
        alive_s: Some(lo.as_secs_f64()),
        expired_s: Some(hi.as_secs_f64()),
        tests,
        note: format!(
            "binding lifetime: alive after {:.1} s, expired after {:.1} s",
            lo.as_secs_f64(),
            hi.as_secs_f64()
        ),
    })
}
