//! The UDP worker loop: receive, rate-limit, answer through the sans-IO responder, send from
//! whichever listener the responder chose.
//!
//! The fast path moves datagrams in batches: one `recvmmsg(2)` takes whatever is queued (up to
//! [`BATCH`], waiting only for the first one), every datagram is answered into its own slot of
//! an output arena, and the replies go out with one `sendmmsg(2)` per outgoing socket (almost
//! always just the worker's own socket; CHANGE-REQUEST answers leave from another listener's).
//! Counters are added up locally and published once per batch, and the clock is read once per
//! batch, so the per-packet cost in user space is the responder itself.
//!
//! Replies to the same client address in one batch (a client with several requests in flight)
//! are coalesced with UDP GSO (`UDP_SEGMENT`): one message whose segments are the replies. The
//! datagrams on the wire are exactly the same; the kernel routes and builds them once, which is
//! where nearly all the cost of a reply is (measured: user space is ~3% of turnd's CPU time).
//!
//! Everything goes through `nix`'s safe wrappers: no `unsafe` here. Each level falls back by
//! itself when the kernel refuses it (GSO → one datagram per reply; `sendmmsg` → `send_to`;
//! `recvmmsg` → the simple one-datagram-at-a-time loop), and `--udp-io batch|simple`
//! forces a lower level (see [`Io`]). All levels answer identically.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

use crate::binding::{Drop, Listener, Responder, Transport};
use crate::ratelimit::RateLimiter;
use crate::server::{Stats, UdpIo as Io, count_reply};

/// Largest datagram read; longer ones are flagged truncated by the kernel and dropped.
const MAX_DATAGRAM: usize = 2048;

/// Most datagrams moved by one `recvmmsg` / `sendmmsg`: 64 × 2 KiB × 2 arenas = 256 KiB per
/// worker. 64 is also the kernel's oldest UDP_MAX_SEGMENTS, so one client's replies in a batch
/// always fit one GSO message.
pub(crate) const BATCH: usize = 64;

/// One worker: owns a socket of one listener.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) listener: Listener,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) senders: Arc<[Option<Arc<UdpSocket>>; 4]>,
    pub(crate) responder: Arc<Responder>,
    /// Shared by every worker of every listener and by TCP.
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) io: Io,
}

/// `recvmmsg` errors that mean "this kernel (or seccomp policy) does not do it".
fn recvmmsg_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM | Errno::EINVAL
    )
}

/// `sendmmsg` errors that mean "not available". Only ENOSYS: EINVAL (a source port of 0),
/// EPERM (a firewall) and the like are about one destination, and a hostile one must not be
/// able to switch the fast path off.
fn sendmmsg_unsupported(e: Errno) -> bool {
    e == Errno::ENOSYS
}

/// GSO errors that can only mean "no GSO here" (no checksum offload: EIO; old kernel:
/// ENOPROTOOPT). Ambiguous ones (EINVAL, EMSGSIZE) count towards [`GSO_MAX_FAILURES`].
fn gso_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::ENOSYS
    )
}

/// GSO messages that may fail before any has worked, before GSO is given up for the worker.
const GSO_MAX_FAILURES: u32 = 8;

/// Per-batch counters, published to the shared [`Stats`] with one atomic add each.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    answered: u64,
    errors: u64,
    dropped: u64,
    rate_limited: u64,
}

impl Tally {
    fn publish(&mut self, stats: &Stats) {
        fn add(counter: &AtomicU64, n: u64) {
            if n != 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        add(&stats.received, self.received);
        add(&stats.answered, self.answered);
        add(&stats.errors, self.errors);
        add(&stats.dropped, self.dropped);
        add(&stats.rate_limited, self.rate_limited);
        *self = Tally::default();
    }
}

/// One answer waiting in the output arena.
#[derive(Debug, Clone, Copy)]
struct Pending {
    from: Listener,
    to: SocketAddr,
    len: usize,
    error: bool,
}

/// What one datagram of a `recvmmsg` batch was.
#[derive(Debug, Clone, Copy)]
struct Received {
    len: usize,
    src: Option<SocketAddr>,
    truncated: bool,
}

const NOTHING: Received = Received {
    len: 0,
    src: None,
    truncated: false,
};

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        s.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

/// Buffers of the batched loop, allocated once per worker.
struct Batcher {
    rx: Vec<u8>,
    tx: Vec<u8>,
    rx_headers: MultiHeaders<SockaddrStorage>,
    tx_headers: MultiHeaders<SockaddrStorage>,
    /// Headers with room for one `UDP_SEGMENT` control message each.
    gso_headers: MultiHeaders<SockaddrStorage>,
    meta: [Received; BATCH],
    pending: [Option<Pending>; BATCH],
    /// sendmmsg is unavailable: send replies one by one.
    single_sends: bool,
    /// Coalesce replies to one destination with UDP GSO (until it proves unavailable).
    gso: bool,
    /// A GSO send has worked: later errors are about a destination.
    gso_proven: bool,
    /// GSO sends that failed before one worked.
    gso_failures: u32,
}

impl Batcher {
    fn new(gso: bool) -> Batcher {
        Batcher {
            rx: vec![0u8; BATCH * MAX_DATAGRAM],
            tx: vec![0u8; BATCH * MAX_DATAGRAM],
            rx_headers: MultiHeaders::preallocate(BATCH, None),
            tx_headers: MultiHeaders::preallocate(BATCH, None),
            gso_headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(u16))),
            meta: [NOTHING; BATCH],
            pending: [None; BATCH],
            single_sends: false,
            gso,
            gso_proven: false,
            gso_failures: 0,
        }
    }
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("single_sends", &self.single_sends)
            .finish_non_exhaustive()
    }
}

/// Why the batched loop returned.
enum Exit {
    Stopped,
    Unsupported(Errno),
}

impl Worker {
    pub(crate) fn run(mut self) {
        let io = self.io;
        if io == Io::Simple {
            self.run_simple();
            return;
        }
        let mut b = Batcher::new(io == Io::Gso);
        match self.run_batched(&mut b) {
            Exit::Stopped => {}
            Exit::Unsupported(e) => {
                tracing::info!(error = %e, "recvmmsg unavailable; using one recv per datagram");
                drop(b);
                self.run_simple();
            }
        }
    }

    /// The socket a reply from `from` leaves through: our own when it is our listener (no
    /// contention with the other workers), else the first socket of that listener.
    fn sender(&self, from: Listener) -> Option<&UdpSocket> {
        if from == self.listener {
            Some(&self.socket)
        } else {
            self.senders
                .get(from.index())
                .and_then(Option::as_ref)
                .map(|s| &**s)
        }
    }

    fn run_batched(&mut self, b: &mut Batcher) -> Exit {
        let fd = self.socket.as_raw_fd();
        let mut tally = Tally::default();
        while !self.stop.load(Ordering::Relaxed) {
            // Receive: block (up to the socket's read timeout) for the first datagram only.
            let n = {
                let mut chunks = b.rx.chunks_exact_mut(MAX_DATAGRAM);
                let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                    std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
                match recvmmsg(
                    fd,
                    &mut b.rx_headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(results) => {
                        let mut n = 0;
                        for (slot, r) in b.meta.iter_mut().zip(results) {
                            *slot = Received {
                                len: r.bytes,
                                src: r.address.as_ref().and_then(to_std),
                                truncated: r.flags.contains(MsgFlags::MSG_TRUNC),
                            };
                            n += 1;
                        }
                        n
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(e) if recvmmsg_unsupported(e) => return Exit::Unsupported(e),
                    Err(e) => {
                        // ICMP errors from earlier sends surface here (ECONNREFUSED): not fatal.
                        tracing::trace!(error = %e, "recvmmsg error");
                        continue;
                    }
                }
            };

            // Answer each datagram into its own slot of the output arena.
            let now = Instant::now();
            let mut replies = 0;
            let rx = b.rx.chunks_exact(MAX_DATAGRAM);
            let tx = b.tx.chunks_exact_mut(MAX_DATAGRAM);
            for ((m, packet), (out, pending)) in b
                .meta
                .iter()
                .take(n)
                .zip(rx)
                .zip(tx.zip(b.pending.iter_mut()))
            {
                *pending = None;
                tally.received += 1;
                let (Some(src), Some(packet), false) = (m.src, packet.get(..m.len), m.truncated)
                else {
                    tally.dropped += 1;
                    continue;
                };
                if !self.limiter.allow(now, src.ip()) {
                    tally.rate_limited += 1;
                    continue;
                }
                match self
                    .responder
                    .handle(Transport::Udp, self.listener, src, packet, out)
                {
                    Ok(reply) => {
                        *pending = Some(Pending {
                            from: reply.from,
                            to: reply.to,
                            len: reply.len,
                            error: reply.error.is_some(),
                        });
                        replies += 1;
                    }
                    Err(why) => {
                        tally.dropped += 1;
                        if !matches!(why, Drop::Malformed(_)) {
                            tracing::trace!(%src, ?why, "dropped");
                        }
                    }
                }
            }

            if replies > 0 {
                self.send_replies(b, n, &mut tally);
            }
            tally.publish(&self.stats);
        }
        Exit::Stopped
    }

    /// Send the pending replies of slots `..n`, grouped by outgoing socket.
    fn send_replies(&self, b: &mut Batcher, n: usize, tally: &mut Tally) {
        // Our own listener first (nearly always the only group), then the others.
        let order = std::iter::once(self.listener)
            .chain(Listener::ALL.into_iter().filter(|l| *l != self.listener));
        for from in order {
            let mut idx = [0usize; BATCH];
            let mut count = 0;
            for (i, p) in b.pending.iter().enumerate().take(n) {
                if p.is_some_and(|p| p.from == from) {
                    idx[count] = i;
                    count += 1;
                }
            }
            if count == 0 {
                continue;
            }
            let Some(sock) = self.sender(from) else {
                continue;
            };
            // Replies the GSO path leaves (or all of them) go out one datagram each.
            let mut rest = [0usize; BATCH];
            let plain: &[usize] = if b.gso && count > 1 {
                match send_coalesced(sock, b, &idx[..count], tally, &mut rest) {
                    Coalesced::Sent { left } => rest.get(..left).unwrap_or(&[]),
                    Coalesced::NothingToCoalesce => &idx[..count],
                    Coalesced::Unsupported(e) => {
                        tracing::info!(error = %e, "UDP GSO unavailable; one datagram per reply");
                        b.gso = false;
                        &idx[..count]
                    }
                }
            } else {
                &idx[..count]
            };
            let mut done = 0;
            while done < plain.len() {
                if b.single_sends {
                    for &i in &plain[done..] {
                        send_one(sock, &b.tx, i, b.pending[i], tally);
                    }
                    break;
                }
                match send_batch(sock, b, &plain[done..], tally) {
                    Ok(sent) => done += sent.max(1),
                    Err(e) if sendmmsg_unsupported(e) => {
                        tracing::info!(error = %e, "sendmmsg unavailable; one send per reply");
                        b.single_sends = true;
                    }
                    Err(e) => {
                        // The first message of the group failed (bad destination...): skip it.
                        tracing::debug!(to = ?b.pending[plain[done]].map(|p| p.to), error = %e,
                            "send failed");
                        done += 1;
                    }
                }
            }
        }
    }

    /// The simple path: one `recv_from` and one `send_to` per datagram.
    fn run_simple(self) {
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
                    let Some(sock) = self.sender(reply.from) else {
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

/// The bytes of the reply in arena slot `i`.
fn reply_bytes(arena: &[u8], i: usize, len: usize) -> &[u8] {
    let start = i * MAX_DATAGRAM;
    arena
        .get(start..start + len.min(MAX_DATAGRAM))
        .unwrap_or(&[])
}

fn count(tally: &mut Tally, p: &Pending) {
    if p.error {
        tally.errors += 1;
    } else {
        tally.answered += 1;
    }
}

fn send_one(sock: &UdpSocket, arena: &[u8], i: usize, p: Option<Pending>, tally: &mut Tally) {
    let Some(p) = p else { return };
    match sock.send_to(reply_bytes(arena, i, p.len), p.to) {
        Ok(_) => count(tally, &p),
        Err(e) => tracing::debug!(to = %p.to, error = %e, "send failed"),
    }
}

/// One `sendmmsg` of the replies in slots `idx` through `sock`. Returns how many the kernel
/// took (at least one; an error means the first of them failed).
fn send_batch(
    sock: &UdpSocket,
    b: &mut Batcher,
    idx: &[usize],
    tally: &mut Tally,
) -> Result<usize, Errno> {
    let mut iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
    let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut n = 0;
    for (&i, (iov, addr)) in idx.iter().zip(iovs.iter_mut().zip(addrs.iter_mut())) {
        let Some(p) = b.pending.get(i).copied().flatten() else {
            continue;
        };
        iov[0] = IoSlice::new(reply_bytes(&b.tx, i, p.len));
        *addr = Some(SockaddrStorage::from(p.to));
        n += 1;
    }
    let sent = sendmmsg(
        sock.as_raw_fd(),
        &mut b.tx_headers,
        iovs.iter().take(n),
        &addrs[..n],
        [],
        MsgFlags::empty(),
    )?
    .count();
    for &i in idx.iter().take(sent) {
        if let Some(p) = b.pending.get(i).copied().flatten() {
            count(tally, &p);
        }
    }
    Ok(sent)
}

/// Most segments in one GSO message (the kernel's UDP_MAX_SEGMENTS is 64, 128 since 6.x).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message: it is one UDP datagram until segmented.
const GSO_MAX_BYTES: usize = 65_000;

/// Replies to one destination with one length, sent as one UDP GSO message.
#[derive(Debug, Clone, Copy)]
struct Train {
    to: SocketAddr,
    len: usize,
    /// Its replies are `order[start..end]` (arena slot numbers).
    start: usize,
    end: usize,
}

/// What [`send_coalesced`] did.
enum Coalesced {
    /// Every reply was handed to the kernel except `left` of them, written to the caller's
    /// `rest`: those of a message the kernel refused (say, a segment over the path MTU), to
    /// be sent one datagram each.
    Sent { left: usize },
    /// No two replies share a destination and a length: nothing to gain, nothing sent.
    NothingToCoalesce,
    /// The first GSO send failed in a way that says GSO is not available; nothing sent.
    Unsupported(Errno),
}

/// Send the replies of slots `idx` (all leaving through `sock`) with UDP GSO: the replies to
/// one destination (a client with several requests in flight) go out as one message whose
/// segments are the individual replies. The datagrams on the wire are exactly those of one send
/// per reply; the kernel builds, routes and (on loopback) delivers them as one packet until the
/// socket layer, which is where most of the per-datagram cost is. One `sendmmsg` per distinct
/// reply length (the segment size is shared by a call); almost always just one.
fn send_coalesced(
    sock: &UdpSocket,
    b: &mut Batcher,
    idx: &[usize],
    tally: &mut Tally,
    rest: &mut [usize; BATCH],
) -> Coalesced {
    // Group: trains[t] collects the replies to one (destination, length).
    let mut trains = [Train {
        to: SocketAddr::from(([0, 0, 0, 0], 0)),
        len: 0,
        start: 0,
        end: 0,
    }; BATCH];
    let mut train_of = [0usize; BATCH];
    let mut n_trains = 0;
    for (&i, t_of) in idx.iter().zip(train_of.iter_mut()) {
        let Some(p) = b.pending.get(i).copied().flatten() else {
            continue;
        };
        let room = |t: &Train| t.end < GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / t.len.max(1));
        let t = match trains[..n_trains]
            .iter()
            .position(|t| t.to == p.to && t.len == p.len && room(t))
        {
            Some(t) => t,
            None => {
                trains[n_trains] = Train {
                    to: p.to,
                    len: p.len,
                    start: 0,
                    end: 0,
                };
                n_trains += 1;
                n_trains - 1
            }
        };
        trains[t].end += 1; // a count for now
        *t_of = t;
    }
    if n_trains >= idx.len() {
        return Coalesced::NothingToCoalesce;
    }
    // Lay the trains out one after the other in `order`.
    let mut at = 0;
    for t in &mut trains[..n_trains] {
        let count = t.end;
        t.start = at;
        t.end = at;
        at += count;
    }
    let mut order = [0usize; BATCH];
    for (&i, &t) in idx.iter().zip(train_of.iter()) {
        let Some(tr) = trains.get_mut(t) else {
            continue;
        };
        if let Some(o) = order.get_mut(tr.end) {
            *o = i;
        }
        tr.end += 1;
    }

    // One sendmmsg per distinct length (usually one), trains in order.
    let mut lengths = [0usize; BATCH];
    let mut n_lengths = 0;
    for t in &trains[..n_trains] {
        if !lengths[..n_lengths].contains(&t.len) {
            lengths[n_lengths] = t.len;
            n_lengths += 1;
        }
    }
    let mut left = 0;
    for &len in &lengths[..n_lengths] {
        let mut pick = [0usize; BATCH];
        let mut k = 0;
        for (t, tr) in trains.iter().enumerate().take(n_trains) {
            if tr.len == len {
                pick[k] = t;
                k += 1;
            }
        }
        let mut done = 0;
        while done < k {
            match send_trains(sock, b, &trains, &pick[done..k], &order, len) {
                Ok(m) => {
                    for &t in &pick[done..done + m] {
                        for &i in order.get(trains[t].start..trains[t].end).unwrap_or(&[]) {
                            if let Some(p) = b.pending.get(i).copied().flatten() {
                                count(tally, &p);
                            }
                        }
                    }
                    b.gso_proven = true;
                    done += m.max(1);
                }
                Err(e) if !b.gso_proven && gso_unsupported(e) => return Coalesced::Unsupported(e),
                Err(e) => {
                    if !b.gso_proven {
                        b.gso_failures += 1;
                        if b.gso_failures >= GSO_MAX_FAILURES {
                            tracing::info!(error = %e, "UDP GSO keeps failing; not using it");
                            b.gso = false;
                        }
                    }
                    // This message failed: its replies get a second chance one by one.
                    tracing::trace!(to = %trains[pick[done]].to, error = %e, "GSO send failed");
                    let t = &trains[pick[done]];
                    for &i in order.get(t.start..t.end).unwrap_or(&[]) {
                        if let Some(r) = rest.get_mut(left) {
                            *r = i;
                            left += 1;
                        }
                    }
                    done += 1;
                }
            }
        }
    }
    Coalesced::Sent { left }
}

/// One `sendmmsg` of the trains `pick` (all with replies of `len` bytes), one message per
/// train, `UDP_SEGMENT` = `len`. Returns how many trains the kernel took (at least one; an
/// error means the first of them failed).
fn send_trains(
    sock: &UdpSocket,
    b: &mut Batcher,
    trains: &[Train],
    pick: &[usize],
    order: &[usize; BATCH],
    len: usize,
) -> Result<usize, Errno> {
    let segment = u16::try_from(len).map_err(|_| Errno::EMSGSIZE)?;
    let tx = &b.tx;
    let iovs: [IoSlice<'_>; BATCH] =
        std::array::from_fn(|pos| IoSlice::new(reply_bytes(tx, order[pos], len)));
    let mut messages: [&[IoSlice<'_>]; BATCH] = [&[]; BATCH];
    let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut n = 0;
    for (&t, (msg, addr)) in pick.iter().zip(messages.iter_mut().zip(addrs.iter_mut())) {
        let Some(tr) = trains.get(t) else { continue };
        *msg = iovs.get(tr.start..tr.end).unwrap_or(&[]);
        *addr = Some(SockaddrStorage::from(tr.to));
        n += 1;
    }
    let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
    let sent = sendmmsg(
        sock.as_raw_fd(),
        &mut b.gso_headers,
        messages.iter().take(n),
        &addrs[..n],
        cmsgs,
        MsgFlags::empty(),
    )?
    .count();
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::ResponderConfig;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::thread::JoinHandle;
    use std::time::Duration;
    use stun::rfc5780::{BindingRequest, BindingResponse};

    const A1: &str = "127.0.0.1";
    const A2: &str = "127.0.0.2";

    /// Four workers (one per RFC 5780 listener) on loopback, each running `io`.
    struct Rig {
        config: ResponderConfig,
        stop: Arc<AtomicBool>,
        stats: Arc<Stats>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Rig {
        fn start(io: Io, rate: u32, burst: u32) -> Rig {
            let (sockets, config) = (0..64)
                .find_map(|_| {
                    let first = UdpSocket::bind((A1, 0)).ok()?;
                    let p1 = first.local_addr().ok()?.port();
                    let p2 = p1.checked_add(1)?;
                    let config = ResponderConfig::new(
                        SocketAddr::new(A1.parse().ok()?, p1),
                        Some((A2.parse().ok()?, p2)),
                    );
                    let mut sockets = vec![first];
                    for (l, a) in config.listeners().skip(1) {
                        assert_eq!(l.index(), sockets.len());
                        sockets.push(UdpSocket::bind(a).ok()?);
                    }
                    Some((sockets, config))
                })
                .expect("a free port pair on 127.0.0.1 and 127.0.0.2");
            let sockets: Vec<Arc<UdpSocket>> = sockets
                .into_iter()
                .map(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    Arc::new(s)
                })
                .collect();
            let senders: Arc<[Option<Arc<UdpSocket>>; 4]> =
                Arc::new(std::array::from_fn(|i| sockets.get(i).cloned()));
            let responder = Arc::new(Responder::new(config.clone()));
            let stop = Arc::new(AtomicBool::new(false));
            let stats = Arc::new(Stats::default());
            // One limiter for the four workers, as `server::spawn` does.
            let limiter = Arc::new(RateLimiter::new(Instant::now(), rate, burst, 1024));
            let threads = Listener::ALL
                .into_iter()
                .zip(&sockets)
                .map(|(l, s)| {
                    let w = Worker {
                        listener: l,
                        socket: s.clone(),
                        senders: senders.clone(),
                        responder: responder.clone(),
                        limiter: limiter.clone(),
                        stop: stop.clone(),
                        stats: stats.clone(),
                        io,
                    };
                    std::thread::spawn(move || w.run())
                })
                .collect();
            Rig {
                config,
                stop,
                stats,
                threads,
            }
        }

        fn addr(&self, l: Listener) -> SocketAddr {
            self.config.address(l).unwrap()
        }

        /// Stop the workers; they must notice within about one read timeout.
        fn stop(self) -> Arc<Stats> {
            let t0 = Instant::now();
            self.stop.store(true, Ordering::SeqCst);
            for t in self.threads {
                t.join().unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(1), "slow stop");
            self.stats
        }
    }

    /// Counters are published once per batch, right after its replies went out: a client can
    /// see an answer a moment before the counter moves.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(2), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn client() -> UdpSocket {
        let s = UdpSocket::bind((A1, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    }

    fn id(n: usize) -> [u8; 12] {
        let mut id = [7u8; 12];
        id[8..].copy_from_slice(&(n as u32).to_be_bytes());
        id
    }

    /// Receive until `want` datagrams came or the socket times out: (source, id, response).
    fn collect(s: &UdpSocket, want: usize) -> Vec<(SocketAddr, u32, BindingResponse, usize)> {
        let mut got = vec![];
        let mut buf = [0u8; 4096];
        while got.len() < want {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                break;
            };
            let m = stun::wire::Message::parse(&buf[..n]).expect("one whole STUN message");
            let tid = m.transaction_id();
            let resp = BindingResponse::parse(&buf[..n]).unwrap();
            got.push((
                from,
                u32::from_be_bytes([tid[8], tid[9], tid[10], tid[11]]),
                resp,
                n,
            ));
        }
        got
    }

    const MODES: [Io; 3] = [Io::Gso, Io::Batch, Io::Simple];

    #[test]
    fn a_burst_from_one_client_gets_one_full_datagram_per_request() {
        for io in MODES {
            let rig = Rig::start(io, 0, 0);
            let c = client();
            let me = c.local_addr().unwrap();
            let n = 200;
            for i in 0..n {
                let req = BindingRequest::default().encode(&id(i)).unwrap();
                c.send_to(&req, rig.addr(Listener::PRIMARY)).unwrap();
            }
            let got = collect(&c, n);
            assert_eq!(got.len(), n, "{io:?}");
            let mut seen: Vec<u32> = got.iter().map(|g| g.1).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "{io:?}");
            for (from, _, r, _) in &got {
                assert_eq!(*from, rig.addr(Listener::PRIMARY));
                assert!(r.success);
                assert_eq!(r.xor_mapped, Some(me));
                assert_eq!(r.mapped, Some(me));
                assert_eq!(r.response_origin, Some(rig.addr(Listener::PRIMARY)));
                assert_eq!(r.other_address, Some(rig.addr(Listener { ip: 1, port: 1 })));
                assert!(r.software.is_some());
            }
            let stats = rig.stats.clone();
            eventually("answered", || {
                stats.answered.load(Ordering::Relaxed) == n as u64
            });
            assert_eq!(stats.received.load(Ordering::Relaxed), n as u64);
            rig.stop();
        }
    }

    #[test]
    fn change_request_and_mixed_lengths_in_one_batch() {
        for io in MODES {
            let rig = Rig::start(io, 0, 0);
            let c = client();
            let mut want = HashMap::new();
            let n = 120;
            for i in 0..n {
                let (change_ip, change_port) = (i % 3 == 1, i % 4 == 2);
                let req = BindingRequest {
                    change_ip,
                    change_port,
                    padding: (i % 5 == 0).then_some(4 * (i % 7)),
                    ..Default::default()
                };
                let from = Listener {
                    ip: u8::from(change_ip),
                    port: u8::from(change_port),
                };
                want.insert(i as u32, (rig.addr(from), req.padding));
                c.send_to(&req.encode(&id(i)).unwrap(), rig.addr(Listener::PRIMARY))
                    .unwrap();
            }
            let got = collect(&c, n);
            assert_eq!(got.len(), n, "{io:?}");
            for (from, tid, r, _) in got {
                let (origin, padding) = want[&tid];
                assert_eq!(from, origin, "{io:?} request {tid}");
                assert_eq!(r.response_origin, Some(origin));
                assert_eq!(r.padding, padding);
            }
            rig.stop();
        }
    }

    #[test]
    fn response_port_and_several_clients_in_one_batch() {
        for io in MODES {
            let rig = Rig::start(io, 0, 0);
            let a = client();
            let b = client();
            let b_port = b.local_addr().unwrap().port();
            for i in 0..60 {
                let req = BindingRequest {
                    response_port: (i % 2 == 1).then_some(b_port),
                    ..Default::default()
                };
                a.send_to(&req.encode(&id(i)).unwrap(), rig.addr(Listener::PRIMARY))
                    .unwrap();
                let req = BindingRequest::default().encode(&id(1000 + i)).unwrap();
                b.send_to(&req, rig.addr(Listener::PRIMARY)).unwrap();
            }
            let at_a = collect(&a, 30);
            let at_b = collect(&b, 90);
            assert_eq!(at_a.len(), 30, "{io:?}");
            assert_eq!(at_b.len(), 90, "{io:?}");
            assert!(at_a.iter().all(|g| g.1 < 1000 && g.1 % 2 == 0));
            let redirected = at_b.iter().filter(|g| g.1 < 1000).count();
            assert_eq!(redirected, 30);
            // The redirected answers still map the requester.
            let a_addr = a.local_addr().unwrap();
            assert!(
                at_b.iter()
                    .filter(|g| g.1 < 1000)
                    .all(|g| g.2.xor_mapped == Some(a_addr))
            );
            rig.stop();
        }
    }

    #[test]
    fn garbage_is_dropped_and_counted_and_truncated_datagrams_too() {
        for io in MODES {
            let rig = Rig::start(io, 0, 0);
            let c = client();
            let to = rig.addr(Listener::PRIMARY);
            c.send_to(&[0x80; 40], to).unwrap();
            c.send_to(&[], to).unwrap();
            // Longer than the receive buffer: a valid header whose length covers it all.
            let big = BindingRequest {
                padding: Some(3000),
                ..Default::default()
            }
            .encode(&id(1))
            .unwrap();
            c.send_to(&big, to).unwrap();
            c.send_to(&BindingRequest::default().encode(&id(2)).unwrap(), to)
                .unwrap();
            let got = collect(&c, 2);
            assert_eq!(got.len(), 1, "{io:?}: only the valid request is answered");
            assert_eq!(got[0].1, 2);
            let stats = rig.stats.clone();
            eventually("answered", || stats.answered.load(Ordering::Relaxed) == 1);
            assert_eq!(stats.received.load(Ordering::Relaxed), 4);
            assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
            rig.stop();
        }
    }

    #[test]
    fn rate_limit_applies_within_a_batch() {
        for io in MODES {
            let rig = Rig::start(io, 1, 3);
            let c = client();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            for i in 0..40 {
                let req = BindingRequest::default().encode(&id(i)).unwrap();
                c.send_to(&req, rig.addr(Listener::PRIMARY)).unwrap();
            }
            let got = collect(&c, 40);
            assert!((3..=4).contains(&got.len()), "{io:?}: {}", got.len());
            let stats = rig.stop();
            assert_eq!(
                stats.rate_limited.load(Ordering::Relaxed) + got.len() as u64,
                40
            );
        }
    }

    /// The four listeners' workers share one limiter: a client spreading its requests over all
    /// four addresses gets the burst once, not four times.
    #[test]
    fn rate_limit_is_shared_by_the_workers_of_every_listener() {
        for io in [Io::Gso, Io::Simple] {
            let rig = Rig::start(io, 1, 6);
            let c = client();
            let n = 40;
            for i in 0..n {
                let req = BindingRequest::default().encode(&id(i)).unwrap();
                c.send_to(&req, rig.addr(Listener::ALL[i % 4])).unwrap();
            }
            let stats = rig.stats.clone();
            eventually("every request answered or limited", || {
                stats.answered.load(Ordering::Relaxed) + stats.rate_limited.load(Ordering::Relaxed)
                    == n as u64
            });
            // Everything answered is queued on the client by now.
            c.set_nonblocking(true).unwrap();
            let got = collect(&c, n);
            assert!(
                (6..=7).contains(&got.len()),
                "{io:?}: {} answers over four listeners with burst 6",
                got.len()
            );
            assert_eq!(stats.answered.load(Ordering::Relaxed), got.len() as u64);
            rig.stop();
        }
    }

    /// Replies in arena slots `0..n`, `lens[i % lens.len()]` bytes each, to `to[i % to.len()]`.
    fn fill(b: &mut Batcher, n: usize, lens: &[usize], to: &[SocketAddr]) -> Vec<usize> {
        for i in 0..n {
            let len = lens[i % lens.len()];
            let slot = &mut b.tx[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len];
            slot.fill(i as u8);
            b.pending[i] = Some(Pending {
                from: Listener::PRIMARY,
                to: to[i % to.len()],
                len,
                error: false,
            });
        }
        (0..n).collect()
    }

    fn datagrams(s: &UdpSocket) -> Vec<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = vec![];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn coalesced_replies_arrive_as_the_same_datagrams() {
        let server = UdpSocket::bind((A1, 0)).unwrap();
        let (x, y) = (client(), client());
        let to = [x.local_addr().unwrap(), y.local_addr().unwrap()];
        let mut b = Batcher::new(true);
        let mut tally = Tally::default();
        let mut rest = [0usize; BATCH];
        // 64 replies, two clients, three lengths: trains per (client, length).
        let idx = fill(&mut b, BATCH, &[92, 92, 120], &to);
        let r = send_coalesced(&server, &mut b, &idx, &mut tally, &mut rest);
        assert!(matches!(r, Coalesced::Sent { left: 0 }));
        assert!(b.gso_proven, "loopback does UDP GSO");
        assert_eq!(tally.answered, BATCH as u64);
        let mut want_x = vec![];
        let mut want_y = vec![];
        for i in 0..BATCH {
            let len = [92, 92, 120][i % 3];
            let d = vec![i as u8; len];
            if i % 2 == 0 {
                want_x.push(d);
            } else {
                want_y.push(d);
            }
        }
        let (mut got_x, mut got_y) = (datagrams(&x), datagrams(&y));
        for v in [&mut want_x, &mut want_y, &mut got_x, &mut got_y] {
            v.sort();
        }
        assert_eq!(got_x, want_x);
        assert_eq!(got_y, want_y);

        // All to different destinations: nothing to coalesce, nothing sent.
        let clients: Vec<UdpSocket> = (0..4).map(|_| client()).collect();
        let to: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        let idx = fill(&mut b, 4, &[92], &to);
        let r = send_coalesced(&server, &mut b, &idx, &mut tally, &mut rest);
        assert!(matches!(r, Coalesced::NothingToCoalesce));
    }

    #[test]
    fn a_refused_gso_message_falls_back_to_single_datagrams() {
        let server = UdpSocket::bind((A1, 0)).unwrap();
        let x = client();
        let mut b = Batcher::new(true);
        b.gso_proven = true;
        let mut tally = Tally::default();
        let mut rest = [0usize; BATCH];
        // Port 0 is refused (EINVAL) whatever the mode: the train comes back for the plain path.
        let zero = SocketAddr::new(A1.parse().unwrap(), 0);
        let idx = fill(&mut b, 6, &[92], &[x.local_addr().unwrap(), zero]);
        let r = send_coalesced(&server, &mut b, &idx, &mut tally, &mut rest);
        let Coalesced::Sent { left } = r else {
            panic!("GSO works on loopback")
        };
        assert_eq!(left, 3);
        assert_eq!(&rest[..3], &[1, 3, 5]);
        assert_eq!(tally.answered, 3);
        assert!(b.gso, "a bad destination does not switch GSO off");
        assert_eq!(datagrams(&x).len(), 3);
        // The plain path skips the bad destination and keeps going.
        assert_eq!(
            send_batch(&server, &mut b, &rest[..3], &mut tally),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn spawned_server_with_reuseport_workers_answers_and_stops_promptly() {
        let mut cfg = crate::server::ServerConfig::new(ResponderConfig::new(
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0),
            Some((IpAddr::from([127, 0, 0, 2]), 0)),
        ));
        cfg.tcp = false;
        cfg.rate_limit = 0;
        cfg.workers = 3;
        let server = crate::server::spawn(cfg).unwrap();
        let primary = server.primary();
        let clients: Vec<UdpSocket> = (0..8).map(|_| client()).collect();
        for (k, c) in clients.iter().enumerate() {
            for i in 0..50 {
                let req = BindingRequest::default().encode(&id(k * 100 + i)).unwrap();
                c.send_to(&req, primary).unwrap();
            }
        }
        for c in &clients {
            assert_eq!(collect(c, 50).len(), 50);
        }
        eventually("answered", || {
            server.stats().answered.load(Ordering::Relaxed) == 400
        });
        let t0 = Instant::now();
        server.shutdown();
        assert!(t0.elapsed() < Duration::from_millis(800));
    }
}
