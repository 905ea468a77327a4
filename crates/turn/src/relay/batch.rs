//! Batched UDP I/O for the relay's UDP workers ([`super::driver`]): `recvmmsg(2)` into a
//! preallocated arena, and `sendmmsg(2)` of a batch of datagrams leaving one socket, with the
//! datagrams to one destination of one length coalesced by UDP GSO (`UDP_SEGMENT`).
//!
//! The relay's per-message cost is almost all the kernel's (four socket operations per echoed
//! message: client → listener, relay → peer, peer → relay, listener → client); moving them in
//! batches divides the per-syscall part by the batch size, and GSO makes a train of datagrams
//! to one client (or from one relay socket to one peer) one trip through the IP stack until the
//! receiver's socket. The datagrams on the wire are exactly those of one send per datagram.
//!
//! Everything goes through `nix`'s safe wrappers (no `unsafe`). Each level falls back by
//! itself when the kernel refuses it: `recvmmsg` → `recv_from`, `sendmmsg` → `send_to`, GSO →
//! one datagram per message (after [`GSO_MAX_FAILURES`] ambiguous failures, or at once on an
//! error that can only mean "no GSO"). A GSO message the kernel refuses (a segment over the
//! path MTU, a bad destination) gets a second chance one datagram at a time.
//!
//! Nothing here allocates after construction.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

/// Most datagrams moved by one `recvmmsg` / `sendmmsg`; also the kernel's oldest
/// UDP_MAX_SEGMENTS, so one train always fits one GSO message.
pub(crate) const BATCH: usize = 64;

/// Bytes per receive slot: any UDP datagram fits. The arena is `BATCH` slots, but its pages
/// are only touched where datagrams land, so small datagrams cost one page per slot.
pub(crate) const RX_SLOT: usize = 65_536;

/// Most bytes in one GSO message: it is one UDP datagram until segmented.
const GSO_MAX_BYTES: usize = 65_000;
/// GSO messages that may fail before any has worked, before GSO is given up.
const GSO_MAX_FAILURES: u32 = 8;

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        s.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

/// `recvmmsg` / `sendmmsg` errors that mean "this kernel (or seccomp policy) does not do it".
fn mmsg_unsupported(e: Errno) -> bool {
    matches!(e, Errno::ENOSYS | Errno::EPERM | Errno::EOPNOTSUPP)
}

/// GSO errors that can only mean "no GSO here".
fn gso_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::ENOSYS
    )
}

/// One received datagram's metadata.
#[derive(Debug, Clone, Copy)]
struct Meta {
    len: usize,
    src: Option<SocketAddr>,
    truncated: bool,
}

const NO_META: Meta = Meta {
    len: 0,
    src: None,
    truncated: false,
};

/// The receive side: an arena of [`BATCH`] slots of [`RX_SLOT`] bytes.
pub(crate) struct Receiver {
    buf: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    meta: [Meta; BATCH],
    /// `recvmmsg` is unavailable: one `recv_from` per call.
    single: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("single", &self.single)
            .finish_non_exhaustive()
    }
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            buf: vec![0u8; BATCH * RX_SLOT],
            headers: MultiHeaders::preallocate(BATCH, None),
            meta: [NO_META; BATCH],
            single: false,
        }
    }
}

/// What one [`Receiver::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// `n` datagrams in slots `0..n` (n ≥ 1).
    Some(usize),
    /// Nothing queued.
    Empty,
    /// An error that is not "nothing queued" (say an ICMP error of an earlier send): try again.
    Error,
}

impl Receiver {
    /// Receive what `sock` (non-blocking) has queued, up to [`BATCH`] datagrams.
    pub(crate) fn recv(&mut self, sock: &UdpSocket) -> Received {
        if self.single {
            let Some(slot) = self.buf.get_mut(..RX_SLOT) else {
                return Received::Empty;
            };
            return match sock.recv_from(slot) {
                Ok((len, src)) => {
                    self.meta[0] = Meta {
                        len,
                        src: Some(src),
                        truncated: false,
                    };
                    Received::Some(1)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Received::Empty,
                Err(_) => Received::Error,
            };
        }
        let mut chunks = self.buf.chunks_exact_mut(RX_SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        match recvmmsg(
            sock.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(results) => {
                let mut n = 0;
                for (slot, r) in self.meta.iter_mut().zip(results) {
                    *slot = Meta {
                        len: r.bytes,
                        src: r.address.as_ref().and_then(to_std),
                        truncated: r.flags.contains(MsgFlags::MSG_TRUNC),
                    };
                    n += 1;
                }
                if n == 0 {
                    Received::Empty
                } else {
                    Received::Some(n)
                }
            }
            Err(Errno::EAGAIN) => Received::Empty,
            Err(e) if mmsg_unsupported(e) => {
                tracing::info!(error = %e, "recvmmsg unavailable; one recv per datagram");
                self.single = true;
                Received::Error
            }
            Err(_) => Received::Error,
        }
    }

    /// Datagram `i` of the last batch: its source and bytes (`None` if truncated or unknown).
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let m = self.meta.get(i)?;
        if m.truncated {
            return None;
        }
        let start = i * RX_SLOT;
        Some((m.src?, self.buf.get(start..start + m.len.min(RX_SLOT))?))
    }

    /// The whole arena (datagram `i` starts at `i * RX_SLOT`), for [`Sender::send`].
    pub(crate) fn arena(&self) -> &[u8] {
        &self.buf
    }
}

/// One datagram to send: `arena[start..start + len]` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    pub(crate) to: SocketAddr,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// Datagrams to one destination with one length: one GSO message.
#[derive(Debug, Clone, Copy)]
struct Train {
    to: SocketAddr,
    len: usize,
    /// Its datagrams are `order[start..end]`.
    start: usize,
    end: usize,
}

const NO_TRAIN: Train = Train {
    to: SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
    len: 0,
    start: 0,
    end: 0,
};

/// What [`Sender::send`] did, to count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams the kernel took.
    pub(crate) ok: u64,
    /// Datagrams it refused.
    pub(crate) failed: u64,
    /// Syscalls made.
    pub(crate) calls: u64,
}

/// The send side: headers for `sendmmsg`, and the GSO state of one worker.
pub(crate) struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
    gso_headers: MultiHeaders<SockaddrStorage>,
    /// `sendmmsg` is unavailable: one `send_to` per datagram.
    single: bool,
    /// Coalesce datagrams to one destination with UDP GSO (until it proves unavailable).
    gso: bool,
    /// A GSO send has worked: later errors are about a destination.
    gso_proven: bool,
    gso_failures: u32,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("single", &self.single)
            .field("gso", &self.gso)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender; `gso` false never tries UDP GSO.
    pub(crate) fn new(gso: bool) -> Self {
        Sender {
            headers: MultiHeaders::preallocate(BATCH, None),
            gso_headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(u16))),
            single: false,
            gso,
            gso_proven: false,
            gso_failures: 0,
        }
    }

    /// Whether GSO is (still) in use.
    #[cfg(test)]
    fn gso(&self) -> bool {
        self.gso
    }

    /// Send `items` (at most [`BATCH`]; more are ignored) through `sock`.
    pub(crate) fn send(&mut self, sock: &UdpSocket, arena: &[u8], items: &[Datagram]) -> Sent {
        let items = items.get(..items.len().min(BATCH)).unwrap_or(items);
        let mut sent = Sent::default();
        let mut rest = [0usize; BATCH];
        let n_rest = if self.gso && items.len() > 1 {
            self.send_trains(sock, arena, items, &mut rest, &mut sent)
        } else {
            for (r, i) in rest.iter_mut().zip(0..items.len()) {
                *r = i;
            }
            items.len()
        };
        self.send_plain(sock, arena, items, &rest[..n_rest], &mut sent);
        sent
    }

    /// Group `items` into trains and send those of two or more datagrams with GSO. Writes the
    /// indices left for the plain path (single datagrams, refused trains) to `rest`.
    fn send_trains(
        &mut self,
        sock: &UdpSocket,
        arena: &[u8],
        items: &[Datagram],
        rest: &mut [usize; BATCH],
        sent: &mut Sent,
    ) -> usize {
        let mut trains = [NO_TRAIN; BATCH];
        let mut train_of = [0usize; BATCH];
        let mut n_trains = 0;
        for (d, t_of) in items.iter().zip(train_of.iter_mut()) {
            let room = |t: &Train| t.end < BATCH.min(GSO_MAX_BYTES / t.len.max(1));
            let found = trains[..n_trains]
                .iter()
                .position(|t| t.to == d.to && t.len == d.len && room(t));
            let t = match found {
                Some(t) => t,
                None => {
                    trains[n_trains] = Train {
                        to: d.to,
                        len: d.len,
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
        // Lay the trains out one after the other in `order`.
        let mut at = 0;
        for t in &mut trains[..n_trains] {
            let count = t.end;
            t.start = at;
            t.end = at;
            at += count;
        }
        let mut order = [0usize; BATCH];
        for (i, &t) in train_of.iter().enumerate().take(items.len()) {
            if let Some(tr) = trains.get_mut(t) {
                if let Some(o) = order.get_mut(tr.end) {
                    *o = i;
                }
                tr.end += 1;
            }
        }
        let mut left = 0;
        let mut push_rest = |tr: &Train, rest: &mut [usize; BATCH]| {
            for &i in order.get(tr.start..tr.end).unwrap_or(&[]) {
                if let Some(r) = rest.get_mut(left) {
                    *r = i;
                    left += 1;
                }
            }
        };
        // Single datagrams go the plain way; the rest, one sendmmsg per length.
        let mut pick = [0usize; BATCH];
        for tr in trains[..n_trains].iter().filter(|t| t.end - t.start == 1) {
            push_rest(tr, rest);
        }
        for first in 0..n_trains {
            let len = trains[first].len;
            let is_new_len = !trains[..first]
                .iter()
                .any(|t| t.len == len && t.end - t.start > 1);
            if trains[first].end - trains[first].start < 2 || !is_new_len {
                continue;
            }
            let mut k = 0;
            for (t, tr) in trains.iter().enumerate().take(n_trains).skip(first) {
                if tr.len == len && tr.end - tr.start > 1 {
                    pick[k] = t;
                    k += 1;
                }
            }
            let mut done = 0;
            while done < k {
                if !self.gso {
                    // GSO was just given up: the rest of the trains go the plain way.
                    for &t in &pick[done..k] {
                        push_rest(&trains[t], rest);
                    }
                    break;
                }
                sent.calls += 1;
                match self.send_gso(sock, arena, items, &trains, &pick[done..k], &order, len) {
                    Ok(m) => {
                        for &t in &pick[done..done + m] {
                            sent.ok += (trains[t].end - trains[t].start) as u64;
                        }
                        self.gso_proven = true;
                        done += m.max(1);
                    }
                    Err(e) => {
                        if !self.gso_proven {
                            self.gso_failures += 1;
                            if gso_unsupported(e) || self.gso_failures >= GSO_MAX_FAILURES {
                                tracing::info!(error = %e, "UDP GSO unavailable; one datagram per message");
                                self.gso = false;
                            }
                        }
                        tracing::trace!(to = %trains[pick[done]].to, error = %e, "GSO send failed");
                        push_rest(&trains[pick[done]], rest);
                        done += 1;
                    }
                }
            }
        }
        left
    }

    /// One `sendmmsg` of the trains `pick` (datagrams of `len` bytes), `UDP_SEGMENT` = `len`.
    /// Returns how many trains the kernel took (an error: the first failed).
    #[allow(clippy::too_many_arguments)]
    fn send_gso(
        &mut self,
        sock: &UdpSocket,
        arena: &[u8],
        items: &[Datagram],
        trains: &[Train; BATCH],
        pick: &[usize],
        order: &[usize; BATCH],
        len: usize,
    ) -> Result<usize, Errno> {
        let segment = u16::try_from(len).map_err(|_| Errno::EMSGSIZE)?;
        let iovs: [IoSlice<'_>; BATCH] = std::array::from_fn(|pos| {
            IoSlice::new(items.get(order[pos]).map_or(&[][..], |d| bytes(arena, d)))
        });
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
        Ok(sendmmsg(
            sock.as_raw_fd(),
            &mut self.gso_headers,
            messages.iter().take(n),
            &addrs[..n],
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )?
        .count())
    }

    /// Send `items[idx]` one datagram per message.
    fn send_plain(
        &mut self,
        sock: &UdpSocket,
        arena: &[u8],
        items: &[Datagram],
        idx: &[usize],
        sent: &mut Sent,
    ) {
        let mut done = 0;
        while done < idx.len() {
            if self.single || idx.len() - done == 1 {
                for d in idx[done..].iter().filter_map(|&i| items.get(i)) {
                    sent.calls += 1;
                    match sock.send_to(bytes(arena, d), d.to) {
                        Ok(_) => sent.ok += 1,
                        Err(e) => {
                            tracing::trace!(to = %d.to, error = %e, "send failed");
                            sent.failed += 1;
                        }
                    }
                }
                return;
            }
            let rest = &idx[done..];
            let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| {
                [IoSlice::new(
                    rest.get(k)
                        .and_then(|&i| items.get(i))
                        .map_or(&[][..], |d| bytes(arena, d)),
                )]
            });
            let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
            for (a, &i) in addrs.iter_mut().zip(rest) {
                *a = items.get(i).map(|d| SockaddrStorage::from(d.to));
            }
            let n = rest.len().min(BATCH);
            sent.calls += 1;
            match sendmmsg(
                sock.as_raw_fd(),
                &mut self.headers,
                iovs.iter().take(n),
                &addrs[..n],
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(r) => {
                    let m = r.count();
                    sent.ok += m as u64;
                    done += m.max(1);
                }
                Err(e) if mmsg_unsupported(e) => {
                    tracing::info!(error = %e, "sendmmsg unavailable; one send per datagram");
                    self.single = true;
                }
                Err(e) => {
                    // The first datagram failed (bad destination, full buffer): skip it.
                    tracing::trace!(error = %e, "send failed");
                    sent.failed += 1;
                    done += 1;
                }
            }
        }
    }
}

fn bytes<'a>(arena: &'a [u8], d: &Datagram) -> &'a [u8] {
    arena.get(d.start..d.start + d.len).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn sock() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 70_000];
        let mut got = vec![];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    /// `n` datagrams in an arena, `lens[i % ..]` bytes, to `to[i % ..]`, filled with `i`.
    fn fill(n: usize, lens: &[usize], to: &[SocketAddr]) -> (Vec<u8>, Vec<Datagram>) {
        let mut arena = vec![];
        let mut items = vec![];
        for i in 0..n {
            let len = lens[i % lens.len()];
            items.push(Datagram {
                to: to[i % to.len()],
                start: arena.len(),
                len,
            });
            arena.extend(std::iter::repeat_n(i as u8, len));
        }
        (arena, items)
    }

    fn want(items: &[Datagram], arena: &[u8], to: SocketAddr) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = items
            .iter()
            .filter(|d| d.to == to)
            .map(|d| bytes(arena, d).to_vec())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn trains_and_singles_arrive_as_the_same_datagrams_in_every_mode() {
        for gso in [true, false] {
            let server = sock();
            let (x, y, z) = (sock(), sock(), sock());
            let to = [
                x.local_addr().unwrap(),
                x.local_addr().unwrap(),
                y.local_addr().unwrap(),
                z.local_addr().unwrap(),
            ];
            // Three lengths, and x gets twice the traffic: trains of several sizes.
            let (arena, items) = fill(BATCH, &[100, 100, 37, 1200, 100], &to);
            let mut s = Sender::new(gso);
            let sent = s.send(&server, &arena, &items);
            assert_eq!(sent.ok, BATCH as u64, "gso={gso}");
            assert_eq!(sent.failed, 0);
            if gso {
                assert!(s.gso_proven, "loopback does UDP GSO");
                assert!(sent.calls < 10, "{} syscalls for {BATCH}", sent.calls);
            }
            for c in [&x, &y, &z] {
                let mut got = drain(c);
                got.sort();
                assert_eq!(
                    got,
                    want(&items, &arena, c.local_addr().unwrap()),
                    "gso={gso}"
                );
            }
        }
    }

    #[test]
    fn large_datagrams_and_a_refused_destination() {
        let server = sock();
        let x = sock();
        let zero = SocketAddr::from(([127, 0, 0, 1], 0));
        // 9000-byte datagrams: a train of 7 fits 65 000 bytes, the rest form another.
        let (arena, items) = fill(12, &[9000], &[x.local_addr().unwrap()]);
        let mut s = Sender::new(true);
        let sent = s.send(&server, &arena, &items);
        assert_eq!(sent.ok, 12);
        let mut got = drain(&x);
        got.sort();
        assert_eq!(got, want(&items, &arena, x.local_addr().unwrap()));

        // Port 0 is refused whatever the mode: those fail, the others arrive, GSO stays on.
        let (arena, items) = fill(10, &[80], &[x.local_addr().unwrap(), zero]);
        let sent = s.send(&server, &arena, &items);
        assert_eq!((sent.ok, sent.failed), (5, 5));
        assert!(s.gso());
        assert_eq!(drain(&x).len(), 5);
    }

    #[test]
    fn receiver_takes_a_batch_and_flags_what_it_cannot_use() {
        let r = sock();
        r.set_nonblocking(true).unwrap();
        let c = sock();
        let mut rx = Receiver::default();
        assert_eq!(rx.recv(&r), Received::Empty);
        for i in 0..70u8 {
            c.send_to(&vec![i; 10 + usize::from(i)], r.local_addr().unwrap())
                .unwrap();
        }
        assert_eq!(rx.recv(&r), Received::Some(BATCH));
        for i in 0..BATCH {
            let (src, b) = rx.get(i).unwrap();
            assert_eq!(src, c.local_addr().unwrap());
            assert_eq!(b, vec![i as u8; 10 + i].as_slice());
            assert_eq!(rx.arena()[i * RX_SLOT], i as u8);
        }
        assert_eq!(rx.recv(&r), Received::Some(6));
        assert_eq!(rx.get(5).unwrap().1.len(), 10 + 69);
        assert_eq!(rx.recv(&r), Received::Empty);
        // The largest UDP datagram fits a slot.
        c.send_to(&vec![9u8; 65_507], r.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rx.recv(&r), Received::Some(1));
        assert_eq!(rx.get(0).unwrap().1.len(), 65_507);
    }
}
