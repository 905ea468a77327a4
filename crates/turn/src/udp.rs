//! The UDP worker loop: receive, rate-limit, answer through the sans-IO responder, send from
//! whichever listener the responder chose.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::binding::{Drop, Listener, Responder, Transport};
use crate::ratelimit::RateLimiter;
use crate::server::{Stats, count_reply};

/// Largest datagram read; longer ones are truncated by the kernel and then fail to parse.
const MAX_DATAGRAM: usize = 2048;

/// One worker: owns a socket of one listener.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) listener: Listener,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) senders: Arc<[Option<Arc<UdpSocket>>; 4]>,
    pub(crate) responder: Arc<Responder>,
    pub(crate) limiter: RateLimiter,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) stats: Arc<Stats>,
}

impl Worker {
    pub(crate) fn run(mut self) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut out = [0u8; MAX_DATAGRAM];
        while !self.stop.load(Ordering::Relaxed) {
            let (n, src) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED): not fatal.
                    tracing::trace!(error = %e, "recv error");
                    continue;
                }
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let Some(packet) = buf.get(..n) else { continue };
            if !self.limiter.allow(Instant::now(), src.ip()) {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self
                .responder
                .handle(Transport::Udp, self.listener, src, packet, &mut out)
            {
                Ok(reply) => {
                    let Some(sock) = self
                        .senders
                        .get(reply.from.index())
                        .and_then(Option::as_ref)
                    else {
                        continue;
                    };
                    let Some(bytes) = out.get(..reply.len) else {
                        continue;
                    };
                    match sock.send_to(bytes, reply.to) {
                        Ok(_) => count_reply(&self.stats, reply.error),
                        Err(e) => tracing::debug!(to = %reply.to, error = %e, "send failed"),
                    }
                }
                Err(why) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if !matches!(why, Drop::Malformed(_)) {
                        tracing::trace!(%src, ?why, "dropped");
                    }
                }
            }
        }
    }
}
