//! The I/O side of the relay (the core in the rest of [`crate::relay`] never touches a
//! socket): UDP workers driving a core over epoll, and TCP/TLS connections driving one core
//! each on tokio.
//!
//! UDP: each worker owns one SO_REUSEPORT socket of a listener (the kernel keeps a client's
//! 5-tuple on one socket, hence on one worker), its own [`Server`] core and the relay sockets
//! of that core's allocations, all registered with one epoll instance. No locks on the data
//! path: the only shared state is the port pool and the quota table, touched when an allocation
//! is created or freed, and the counters, published once per loop.
//!
//! TCP and TLS: each connection is one 5-tuple, hence at most one allocation; it gets its own
//! small core and its relay socket lives in the connection's task. The allocation is deleted
//! when the connection closes (RFC 8656 §3.1).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::batch::{BATCH, Datagram, RX_SLOT, Received, Receiver, Sender};
use super::{Family, FiveTuple, Metrics, Output, PortPool, RelayPorts, Server, Shared, Transport};
use crate::binding::{Listener, Responder, Transport as BindingTransport};
use crate::proto;
use crate::ratelimit::RateLimiter;
use crate::server::{Stats, count_reply};

/// Largest datagram read from a client or a peer (larger ones are truncated and dropped).
const MAX_DATAGRAM: usize = 65_536;
/// Room for a Data indication's header and attribute headers around a peer's payload.
const HEADROOM: usize = 64;

/// The relay port pools of a server, one per relay IP.
#[derive(Debug)]
pub struct Pools {
    v4: Option<(IpAddr, PortPool)>,
    v6: Option<(IpAddr, PortPool)>,
}

impl Pools {
    /// Pools for the relay IPs over `range`.
    pub fn new(
        v4: Option<IpAddr>,
        v6: Option<IpAddr>,
        range: std::ops::RangeInclusive<u16>,
        seed: u64,
    ) -> Self {
        Pools {
            v4: v4.map(|ip| (ip, PortPool::new(range.clone(), seed))),
            v6: v6.map(|ip| (ip, PortPool::new(range.clone(), seed ^ 0x5555))),
        }
    }

    fn pool(&mut self, f: Family) -> Option<&mut (IpAddr, PortPool)> {
        match f {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        }
    }

    /// Free ports of a family.
    pub fn available(&self, f: Family) -> usize {
        match f {
            Family::V4 => self.v4.as_ref().map_or(0, |p| p.1.available()),
            Family::V6 => self.v6.as_ref().map_or(0, |p| p.1.available()),
        }
    }
}

/// Everything TURN drivers share.
#[derive(Debug, Clone)]
pub struct TurnContext {
    /// The cores' shared state.
    pub shared: Arc<Shared>,
    /// Server-wide counters.
    pub metrics: Arc<Metrics>,
    /// Relay ports.
    pub pools: Arc<Mutex<Pools>>,
}

impl TurnContext {
    fn supports(&self, f: Family) -> bool {
        let p = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        match f {
            Family::V4 => p.v4.is_some(),
            Family::V6 => p.v6.is_some(),
        }
    }
}

/// Bind a relay socket from the pool: tries a few ports (another program may hold one).
fn bind_relay(pools: &Mutex<Pools>, f: Family, even: bool) -> Option<(SocketAddr, UdpSocket)> {
    let mut p = pools.lock().unwrap_or_else(PoisonError::into_inner);
    let (ip, pool) = p.pool(f)?;
    let ip = *ip;
    let mut failed = vec![];
    let mut found = None;
    for _ in 0..16 {
        let Some(port) = pool.take(even) else { break };
        let addr = SocketAddr::new(ip, port);
        match relay_socket(addr) {
            Ok(s) => {
                found = Some((addr, s));
                break;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "relay port unavailable");
                failed.push(port);
            }
        }
    }
    for port in failed {
        pool.put(port);
    }
    found
}

fn relay_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn give_back(pools: &Mutex<Pools>, addr: SocketAddr) {
    let mut p = pools.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, pool)) = p.pool(Family::of(&addr)) {
        pool.put(addr.port());
    }
}

// ---------------------------------------------------------------------------------------------
// UDP.

/// Relay sockets of one UDP worker, registered with its epoll (token = slot + 1).
struct EpollPorts<'e> {
    ctx: TurnContext,
    epoll: &'e Epoll,
    slots: Vec<Option<(SocketAddr, UdpSocket)>>,
    free: Vec<usize>,
    by_addr: super::FxMap<SocketAddr, usize>,
}

impl std::fmt::Debug for EpollPorts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollPorts")
            .field("live", &self.by_addr.len())
            .finish()
    }
}

impl RelayPorts for EpollPorts<'_> {
    fn supports(&self, f: Family) -> bool {
        self.ctx.supports(f)
    }

    fn acquire(&mut self, f: Family, even: bool) -> Option<SocketAddr> {
        let (addr, sock) = bind_relay(&self.ctx.pools, f, even)?;
        let i = self.free.pop().unwrap_or(self.slots.len());
        let token = i as u64 + 1;
        if let Err(e) = self
            .epoll
            .add(sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
        {
            tracing::warn!(error = %e, "cannot register a relay socket");
            give_back(&self.ctx.pools, addr);
            return None;
        }
        if i == self.slots.len() {
            self.slots.push(Some((addr, sock)));
        } else if let Some(s) = self.slots.get_mut(i) {
            *s = Some((addr, sock));
        }
        self.by_addr.insert(addr, i);
        Some(addr)
    }

    fn release(&mut self, addr: SocketAddr) {
        let Some(i) = self.by_addr.remove(&addr) else {
            return;
        };
        if let Some((_, sock)) = self.slots.get_mut(i).and_then(Option::take) {
            let _ = self.epoll.delete(sock.as_fd());
            drop(sock);
            self.free.push(i);
            give_back(&self.ctx.pools, addr);
        }
    }
}

/// One UDP worker with TURN enabled.
#[derive(Debug)]
pub(crate) struct UdpWorker {
    pub(crate) listener: Listener,
    pub(crate) local: SocketAddr,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) senders: Arc<[Option<Arc<UdpSocket>>; 4]>,
    pub(crate) responder: Arc<Responder>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) turn: TurnContext,
    pub(crate) instance: u64,
}

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// `recvmmsg` batches taken from the listener per wake before the worker looks at its relay
/// sockets (fairness); a relay socket gets at most [`RELAY_BATCHES`].
const LISTENER_BATCHES: usize = 4;
const RELAY_BATCHES: usize = 2;
/// Bytes per slot of the client-bound arena: the largest datagram plus a Data indication's
/// headers. Only the pages datagrams are written to are ever touched.
const TX_SLOT: usize = MAX_DATAGRAM + HEADROOM;

/// Datagrams for clients (answers and relayed peer data), all leaving through the worker's
/// listener socket: gathered over a whole epoll round (the listener and every ready relay
/// socket) and sent with one `sendmmsg`, trains to one client coalesced by GSO.
struct ClientQueue {
    arena: Vec<u8>,
    items: [Datagram; BATCH],
    n: usize,
}

const NO_DATAGRAM: Datagram = Datagram {
    to: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    start: 0,
    len: 0,
};

impl ClientQueue {
    fn new() -> Self {
        ClientQueue {
            arena: vec![0u8; BATCH * TX_SLOT],
            items: [NO_DATAGRAM; BATCH],
            n: 0,
        }
    }

    /// The next free slot, to write a datagram into (the queue must not be full).
    fn slot(&mut self) -> &mut [u8] {
        let start = self.n * TX_SLOT;
        self.arena
            .get_mut(start..start + TX_SLOT)
            .unwrap_or_default()
    }

    /// Queue the slot just written: `len` bytes to `to`.
    fn commit(&mut self, to: SocketAddr, len: usize) {
        if let Some(d) = self.items.get_mut(self.n) {
            *d = Datagram {
                to,
                start: self.n * TX_SLOT,
                len: len.min(TX_SLOT),
            };
            self.n += 1;
        }
    }

    fn full(&self) -> bool {
        self.n >= BATCH
    }
}

/// A payload for a peer: bytes of the receive arena, to leave through relay socket `slot`.
#[derive(Debug, Clone, Copy)]
struct PeerOut {
    slot: usize,
    relay: SocketAddr,
    data: Datagram,
}

/// The worker's batch buffers, allocated once.
struct Batch {
    rx: Receiver,
    tx: Sender,
    clients: ClientQueue,
    peers: [PeerOut; BATCH],
    n_peers: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

impl UdpWorker {
    pub(crate) fn run(self) {
        if let Err(e) = self.run_inner() {
            tracing::error!(error = %e, "TURN UDP worker failed");
        }
    }

    fn run_inner(&self) -> io::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        self.socket.set_nonblocking(true)?;
        epoll
            .add(self.socket.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(io::Error::from)?;
        let mut ports = EpollPorts {
            ctx: self.turn.clone(),
            epoll: &epoll,
            slots: vec![],
            free: vec![],
            by_addr: super::FxMap::default(),
        };
        let mut core = Server::new(self.turn.shared.clone(), self.instance);
        let mut events = [EpollEvent::empty(); EVENTS];
        let mut b = Batch {
            rx: Receiver::default(),
            tx: Sender::new(true),
            clients: ClientQueue::new(),
            peers: [PeerOut {
                slot: 0,
                relay: NO_DATAGRAM.to,
                data: NO_DATAGRAM,
            }; BATCH],
            n_peers: 0,
        };
        let mut last_publish = Instant::now();
        // Counted locally, published with the core's counters: no shared atomic per packet.
        let mut received = 0u64;
        let mut result = Ok(());
        while !self.stop.load(Ordering::Relaxed) {
            let n = match epoll.wait(&mut events, 100u16) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Leave through the cleanup below: quota and relay ports must not leak.
                    result = Err(e.into());
                    break;
                }
            };
            let now = Instant::now();
            for ev in events.iter().take(n) {
                let token = ev.data();
                if token == 0 {
                    received += self.drain_listener(now, &mut core, &mut ports, &mut b);
                } else {
                    let i = (token - 1) as usize;
                    self.drain_relay(now, &mut core, &ports, i, &mut b);
                }
            }
            self.flush_clients(&mut b.clients, &mut b.tx);
            core.handle_timeout(now, &mut ports);
            if now.duration_since(last_publish) >= Duration::from_millis(100) || n == 0 {
                core.counters().publish(&self.turn.metrics);
                let r = std::mem::take(&mut received);
                self.stats.received.fetch_add(r, Ordering::Relaxed);
                last_publish = now;
            }
        }
        // Graceful stop or failure: every allocation of this worker goes, with its relay
        // socket and its quota.
        core.close_all(&mut ports);
        core.counters().publish(&self.turn.metrics);
        self.stats.received.fetch_add(received, Ordering::Relaxed);
        result
    }

    fn flush_clients(&self, q: &mut ClientQueue, tx: &mut Sender) {
        if q.n > 0 {
            let items = q.items.get(..q.n).unwrap_or_default();
            tx.send(&self.socket, &q.arena, items);
            q.n = 0;
        }
    }

    /// Send the payloads queued for peers: one `sendmmsg` per relay socket (in slot order),
    /// trains to one peer coalesced by GSO. They point into the receive arena: this runs before
    /// the next receive.
    fn flush_peers(ports: &EpollPorts<'_>, b: &mut Batch) {
        let peers = b.peers.get_mut(..b.n_peers).unwrap_or_default();
        b.n_peers = 0;
        peers.sort_unstable_by_key(|p| (p.slot, p.data.start));
        let mut items = [NO_DATAGRAM; BATCH];
        for run in peers.chunk_by(|a, c| a.slot == c.slot) {
            let Some(first) = run.first() else { continue };
            // The allocation may have gone (and its slot been reused) later in the batch.
            let Some((_, sock)) = ports
                .slots
                .get(first.slot)
                .and_then(Option::as_ref)
                .filter(|(a, _)| *a == first.relay)
            else {
                continue;
            };
            let mut k = 0;
            for (d, p) in items.iter_mut().zip(run) {
                *d = p.data;
                k += 1;
            }
            b.tx.send(sock, b.rx.arena(), &items[..k]);
        }
    }

    fn drain_listener(
        &self,
        now: Instant,
        core: &mut Server,
        ports: &mut EpollPorts<'_>,
        b: &mut Batch,
    ) -> u64 {
        let mut received = 0;
        for _ in 0..LISTENER_BATCHES {
            let n = match b.rx.recv(&self.socket) {
                Received::Some(n) => n,
                Received::Empty => break,
                Received::Error => continue, // ICMP errors from earlier sends
            };
            received += n as u64;
            for i in 0..n {
                let Some((src, packet)) = b.rx.get(i) else {
                    continue;
                };
                let five = FiveTuple {
                    client: src,
                    server: self.local,
                    transport: Transport::Udp,
                };
                // ChannelData and traffic of allocated clients skip the per-source limiter
                // (they are authenticated, and quota and bandwidth caps bound them).
                let exempt = core.framing(packet) == proto::Framing::ChannelData
                    || core.has_allocation(&five);
                if !exempt && !self.limiter.allow(now, src.ip()) {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if b.clients.full() {
                    self.flush_clients(&mut b.clients, &mut b.tx);
                }
                let out = b.clients.slot();
                match core.handle_client(now, ports, five, packet, out) {
                    Output::None => {}
                    Output::Client { len } => b.clients.commit(src, len),
                    Output::Peer { relay, peer, data } => {
                        let (Some(&slot), Some(p)) =
                            (ports.by_addr.get(&relay), b.peers.get_mut(b.n_peers))
                        else {
                            continue;
                        };
                        *p = PeerOut {
                            slot,
                            relay,
                            data: Datagram {
                                to: peer,
                                start: i * RX_SLOT + data.start,
                                len: data.len(),
                            },
                        };
                        b.n_peers += 1;
                    }
                    Output::Binding => self.binding(src, packet, out),
                }
            }
            Self::flush_peers(ports, b);
            if n < BATCH {
                break;
            }
        }
        received
    }

    fn binding(&self, src: SocketAddr, packet: &[u8], out: &mut [u8]) {
        match self
            .responder
            .handle(BindingTransport::Udp, self.listener, src, packet, out)
        {
            Ok(reply) => {
                let sock = if reply.from == self.listener {
                    Some(&*self.socket)
                } else {
                    self.senders
                        .get(reply.from.index())
                        .and_then(Option::as_deref)
                };
                if let (Some(sock), Some(b)) = (sock, out.get(..reply.len)) {
                    if sock.send_to(b, reply.to).is_ok() {
                        count_reply(&self.stats, reply.error);
                    }
                }
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn drain_relay(
        &self,
        now: Instant,
        core: &mut Server,
        ports: &EpollPorts<'_>,
        i: usize,
        b: &mut Batch,
    ) {
        let Some((relay, sock)) = ports.slots.get(i).and_then(Option::as_ref) else {
            return;
        };
        for _ in 0..RELAY_BATCHES {
            let n = match b.rx.recv(sock) {
                Received::Some(n) => n,
                Received::Empty => return,
                Received::Error => continue, // ICMP errors from earlier sends
            };
            for k in 0..n {
                let Some((peer, data)) = b.rx.get(k) else {
                    continue;
                };
                if b.clients.full() {
                    self.flush_clients(&mut b.clients, &mut b.tx);
                }
                if let Some(to) = core.handle_peer(now, *relay, peer, data, b.clients.slot()) {
                    b.clients.commit(to.five.client, to.len);
                }
            }
            if n < BATCH {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP and TLS.

/// The relay sockets of one stream connection.
#[derive(Debug)]
struct StreamPorts {
    ctx: TurnContext,
    sockets: Vec<(SocketAddr, tokio::net::UdpSocket)>,
}

impl RelayPorts for StreamPorts {
    fn supports(&self, f: Family) -> bool {
        self.ctx.supports(f)
    }

    fn acquire(&mut self, f: Family, even: bool) -> Option<SocketAddr> {
        let (addr, sock) = bind_relay(&self.ctx.pools, f, even)?;
        match tokio::net::UdpSocket::from_std(sock) {
            Ok(s) => {
                self.sockets.push((addr, s));
                Some(addr)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a relay socket");
                give_back(&self.ctx.pools, addr);
                None
            }
        }
    }

    fn release(&mut self, addr: SocketAddr) {
        if let Some(i) = self.sockets.iter().position(|(a, _)| *a == addr) {
            self.sockets.swap_remove(i);
            give_back(&self.ctx.pools, addr);
        }
    }
}

impl StreamPorts {
    /// The next datagram on any relay socket: (relay, peer, length).
    async fn recv(&self, buf: &mut [u8]) -> (SocketAddr, SocketAddr, usize) {
        std::future::poll_fn(|cx| {
            for (addr, s) in &self.sockets {
                let mut rb = tokio::io::ReadBuf::new(buf);
                match s.poll_recv_from(cx, &mut rb) {
                    Poll::Ready(Ok(peer)) => return Poll::Ready((*addr, peer, rb.filled().len())),
                    Poll::Ready(Err(_)) => {
                        // An ICMP error from an earlier send: look again soon.
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// What a TURN stream connection needs besides its stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamContext {
    pub(crate) turn: TurnContext,
    pub(crate) responder: Arc<Responder>,
    pub(crate) stats: Arc<Stats>,
    /// The server's one rate limiter: every frame of a client without an allocation goes
    /// through it, as on UDP.
    pub(crate) limiter: Arc<RateLimiter>,
    /// A connection with neither a complete frame nor an allocation for this long is closed.
    pub(crate) idle: Duration,
    /// A frame must be complete this long after its first byte arrived (slowloris).
    pub(crate) frame: Duration,
}

/// [`proto::stream_frame_len`], with RFC 5766 channel numbers (first byte 0x50-0x7F) when
/// `rfc5766_channels` is on; without it those bytes are not a frame anyone may send.
fn stream_frame_len(
    bytes: &[u8],
    rfc5766_channels: bool,
) -> Result<Option<usize>, proto::ChannelDataError> {
    match bytes.first() {
        Some(0x50..=0x7F) if rfc5766_channels => {
            Ok(bytes.get(..proto::CHANNEL_DATA_HEADER).map(|h| {
                proto::ChannelData::wire_len(usize::from(u16::from_be_bytes([h[2], h[3]])), true)
            }))
        }
        _ => proto::stream_frame_len(bytes),
    }
}

/// Largest frame on a TURN stream: a STUN message or ChannelData of at most 64 KiB.
const MAX_STREAM_FRAME: usize = 65_536 + proto::CHANNEL_DATA_HEADER + 4;
/// Bytes a connection's read buffer starts with; it grows to the frame being read (and at
/// most [`MAX_STREAM_FRAME`] plus one read) only when a frame needs it.
const STREAM_BUF_START: usize = 2048;

/// Why a stream connection is closed by the server.
fn closing(kind: io::ErrorKind, why: &'static str) -> io::Error {
    io::Error::new(kind, why)
}

/// Serve one TCP or TLS connection until it closes, carrying at most one allocation.
///
/// The protections of the Binding-only TCP path apply here too: a partial frame must be
/// complete within the frame deadline; the idle clock is reset by complete frames (and by a
/// live allocation), never by single bytes; frames of a client without an allocation go
/// through the shared rate limiter (over the limit: the connection is closed, freeing its
/// slot); buffers start small and grow only as frames need.
pub(crate) async fn stream_connection<S>(
    stream: S,
    five: FiveTuple,
    local: Listener,
    ctx: StreamContext,
    instance: u64,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut core = Server::new(ctx.turn.shared.clone(), instance);
    let rfc5766 = ctx.turn.shared.config.rfc5766_channels;
    let mut ports = StreamPorts {
        ctx: ctx.turn.clone(),
        sockets: vec![],
    };
    let mut buf = vec![0u8; STREAM_BUF_START];
    // Allocated on first use: the answer buffer with the first frame, the relay buffer with
    // the first relay socket.
    let mut out: Vec<u8> = Vec::new();
    let mut pbuf: Vec<u8> = Vec::new();
    let mut have = 0;
    let mut last_activity = Instant::now();
    // When the partial frame in `buf` began: it must be complete by then + ctx.frame.
    let mut frame_started: Option<Instant> = None;
    let result: io::Result<()> = async {
        loop {
            let mut wake = last_activity + ctx.idle;
            if let Some(t) = core.poll_timeout() {
                wake = wake.min(t);
            }
            if let Some(t) = frame_started {
                wake = wake.min(t + ctx.frame);
            }
            if have == buf.len() {
                // The frame being read is longer than the buffer (checked against
                // MAX_STREAM_FRAME below): make room for it.
                let want = match stream_frame_len(&buf[..have], rfc5766) {
                    Ok(Some(l)) => l.max(have + 1),
                    _ => have + 1,
                };
                buf.resize(want.min(MAX_STREAM_FRAME).max(have + 1), 0);
            }
            tokio::select! {
                r = rd.read(&mut buf[have..]) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    have += n;
                    let now = Instant::now();
                    frame_started.get_or_insert(now);
                    let mut start = 0;
                    loop {
                        let len = match stream_frame_len(&buf[start..have], rfc5766) {
                            Ok(Some(l)) => l,
                            Ok(None) => break,
                            Err(e) => {
                                ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
                                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                            }
                        };
                        if len > MAX_STREAM_FRAME {
                            return Err(closing(io::ErrorKind::InvalidData, "frame too large"));
                        }
                        if have - start < len {
                            break;
                        }
                        let frame = &buf[start..start + len];
                        start += len;
                        // A complete frame: the connection is active, and what follows (if
                        // anything) is the start of the next frame.
                        last_activity = now;
                        frame_started = (have > start).then_some(now);
                        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                        let exempt = core.framing(frame) == proto::Framing::ChannelData
                            || core.has_allocation(&five);
                        if !exempt && !ctx.limiter.allow(now, five.client.ip()) {
                            ctx.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                            return Err(io::Error::other("rate limited"));
                        }
                        if out.is_empty() {
                            out.resize(MAX_STREAM_FRAME + HEADROOM, 0);
                        }
                        match core.handle_client(now, &mut ports, five, frame, &mut out) {
                            Output::None => {}
                            Output::Client { len } => wr.write_all(&out[..len]).await?,
                            Output::Peer { relay, peer, data } => {
                                if let (Some((_, s)), Some(b)) =
                                    (ports.sockets.iter().find(|(a, _)| *a == relay), frame.get(data))
                                {
                                    let _ = s.try_send_to(b, peer);
                                }
                            }
                            Output::Binding => {
                                match ctx.responder.handle(BindingTransport::Tcp, local, five.client, frame, &mut out) {
                                    Ok(reply) => {
                                        count_reply(&ctx.stats, reply.error);
                                        wr.write_all(&out[..reply.len]).await?;
                                    }
                                    Err(_) => {
                                        ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                    }
                    buf.copy_within(start..have, 0);
                    have -= start;
                    if have == 0 && buf.len() > STREAM_BUF_START {
                        // A large frame passed: give its memory back.
                        buf.truncate(STREAM_BUF_START);
                        buf.shrink_to_fit();
                    }
                    core.counters().publish(&ctx.turn.metrics);
                }
                (relay, peer, n) = ports.recv(&mut pbuf), if !ports.sockets.is_empty() && !pbuf.is_empty() => {
                    let now = Instant::now();
                    if let Some(to) = core.handle_peer(now, relay, peer, &pbuf[..n], &mut out) {
                        wr.write_all(&out[..to.len]).await?;
                    }
                    core.counters().publish(&ctx.turn.metrics);
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if frame_started.is_some_and(|t| now >= t + ctx.frame) {
                        ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        return Err(closing(io::ErrorKind::TimedOut, "incomplete frame"));
                    }
                    core.handle_timeout(now, &mut ports);
                    // Idle means no complete frame and no allocation left to keep alive.
                    if core.allocations() == 0 && now >= last_activity + ctx.idle {
                        return Err(closing(io::ErrorKind::TimedOut, "idle"));
                    }
                    if core.allocations() > 0 {
                        last_activity = now;
                    }
                    core.counters().publish(&ctx.turn.metrics);
                }
            }
            if !ports.sockets.is_empty() && pbuf.is_empty() {
                pbuf.resize(MAX_DATAGRAM, 0);
            }
        }
    }
    .await;
    // RFC 8656 §3.1: the allocation goes with its connection.
    core.close_all(&mut ports);
    core.counters().publish(&ctx.turn.metrics);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_framing_follows_rfc5766_channels() {
        // 0x5000: ChannelData with RFC 5766 numbers, a framing error without them (a stream
        // cannot be re-synchronised, so the connection is closed).
        let cd = [0x50, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(stream_frame_len(&cd, true), Ok(Some(12)));
        assert!(stream_frame_len(&cd, false).is_err());
        let cd = [0x40, 0x00, 0x00, 0x05];
        assert_eq!(stream_frame_len(&cd, false), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x7F], true), Ok(None));
        assert!(stream_frame_len(&[0x7F], false).is_err());
    }
}
