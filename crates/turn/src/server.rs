//! Drivers binding the sans-IO [`Responder`] to real sockets: UDP worker threads (blocking
//! sockets, one or more per listening address) and a small tokio runtime for TCP.
//!
//! One [`RateLimiter`] is shared by every UDP worker of every listener and by TCP, so a source
//! gets the configured rate in total. TCP also caps connections (in total and per source),
//! checks the limiter when a connection is accepted, enforces idle and frame deadlines, and backs
//! off when `accept` fails (out of file descriptors), logging at most once a second.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::binding::{Listener, Responder, ResponderConfig, Transport};
use crate::ratelimit::{DEFAULT_BUCKETS, RateLimiter, source_key};
use crate::udp;

/// Which socket calls the UDP workers use. The default is the fastest the kernel offers; each
/// level falls back to the next by itself when the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpIo {
    /// recvmmsg/sendmmsg, and replies to one destination in a batch coalesced with UDP GSO
    /// (the datagrams on the wire are the same; the kernel handles them in one pass).
    #[default]
    Gso,
    /// recvmmsg/sendmmsg, one datagram per reply.
    Batch,
    /// One recv_from and one send_to per datagram.
    Simple,
}

impl std::str::FromStr for UdpIo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gso" => Ok(UdpIo::Gso),
            "batch" => Ok(UdpIo::Batch),
            "simple" => Ok(UdpIo::Simple),
            other => Err(format!(
                "udp_io must be gso, batch or simple, not {other:?}"
            )),
        }
    }
}

/// Everything `turnd` needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses and response shaping.
    pub responder: ResponderConfig,
    /// Serve UDP.
    pub udp: bool,
    /// Serve TCP.
    pub tcp: bool,
    /// Per-source packets per second (0: unlimited).
    pub rate_limit: u32,
    /// Per-source burst.
    pub rate_burst: u32,
    /// UDP worker threads per listening address (SO_REUSEPORT); 0 = one per core.
    pub workers: usize,
    /// Most simultaneous TCP connections.
    pub max_tcp_connections: usize,
    /// Most simultaneous TCP connections from one source (IPv4 address or IPv6 /64); 0: no
    /// per-source cap (only `max_tcp_connections`).
    pub max_tcp_per_source: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A frame whose first byte has arrived must be complete within this time, however the
    /// bytes trickle in (slowloris).
    pub tcp_frame_timeout: Duration,
    /// UDP socket calls.
    pub udp_io: UdpIo,
}

impl ServerConfig {
    /// Defaults around a responder config.
    pub fn new(responder: ResponderConfig) -> Self {
        ServerConfig {
            responder,
            udp: true,
            tcp: true,
            rate_limit: 100,
            rate_burst: 200,
            workers: 0,
            max_tcp_connections: 1024,
            max_tcp_per_source: 16,
            tcp_idle_timeout: Duration::from_secs(30),
            tcp_frame_timeout: Duration::from_secs(5),
            udp_io: UdpIo::default(),
        }
    }
}

/// Counters, readable while the server runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams and frames received.
    pub received: AtomicU64,
    /// Success responses sent.
    pub answered: AtomicU64,
    /// Error responses sent.
    pub errors: AtomicU64,
    /// Dropped as malformed or not a request.
    pub dropped: AtomicU64,
    /// Dropped by the rate limiter (UDP datagrams, TCP frames and TCP connections).
    pub rate_limited: AtomicU64,
    /// TCP connections closed on accept for the connection caps (total or per source).
    pub tcp_refused: AtomicU64,
}

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct RunningServer {
    addresses: Vec<(Listener, SocketAddr)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
    tcp_shutdown: Option<tokio::sync::watch::Sender<bool>>,
}

impl RunningServer {
    /// Bound listening addresses (ports resolved if 0 was asked for).
    pub fn addresses(&self) -> &[(Listener, SocketAddr)] {
        &self.addresses
    }

    /// The primary address.
    pub fn primary(&self) -> SocketAddr {
        self.addresses
            .iter()
            .find(|(l, _)| *l == Listener::PRIMARY)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| unreachable!("the primary listener is always bound"))
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stop every thread and wait for them.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = self.tcp_shutdown.take() {
            let _ = tx.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(reuse_port)?;
    // Large buffers ride out bursts without drops (best effort: capped by rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Resolve port 0: find a port pair free on both IPs for UDP (and TCP when enabled).
fn resolve_ports(cfg: &mut ResponderConfig, tcp: bool) -> io::Result<()> {
    if cfg.primary.port() != 0 && cfg.alternate.is_none_or(|(_, p)| p != 0) {
        return Ok(());
    }
    for _ in 0..64 {
        let probe = UdpSocket::bind(SocketAddr::new(cfg.primary.ip(), 0))?;
        let p1 = probe.local_addr()?.port();
        drop(probe);
        let p2 = p1.wrapping_add(1);
        if p2 < 1024 {
            continue;
        }
        let mut trial = cfg.clone();
        trial.primary.set_port(p1);
        if let Some((ip, _)) = trial.alternate {
            trial.alternate = Some((ip, p2));
        }
        let free = trial
            .listeners()
            .all(|(_, a)| UdpSocket::bind(a).is_ok() && (!tcp || StdTcpListener::bind(a).is_ok()));
        if free {
            *cfg = trial;
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port pair found for the listeners",
    ))
}

/// Bind every listener and start serving.
pub fn spawn(mut config: ServerConfig) -> io::Result<RunningServer> {
    resolve_ports(&mut config.responder, config.tcp)?;
    let responder = Arc::new(Responder::new(config.responder.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let addresses: Vec<_> = config.responder.listeners().collect();
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // One limiter for everything: per-worker or per-transport limiters would multiply the
    // per-source rate by the number of sockets a source can reach.
    let limiter = Arc::new(RateLimiter::new(
        Instant::now(),
        config.rate_limit,
        config.rate_burst,
        DEFAULT_BUCKETS,
    ));
    let mut threads = vec![];

    if config.udp {
        // sockets[listener][worker]; replies from another listener use its first socket.
        let mut sockets: Vec<Vec<Arc<UdpSocket>>> = vec![vec![]; 4];
        for &(l, a) in &addresses {
            for _ in 0..workers {
                let s = udp_socket(a, workers > 1).map_err(|e| annotate(e, "UDP", a))?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                sockets[l.index()].push(Arc::new(s));
            }
        }
        let senders: Arc<[Option<Arc<UdpSocket>>; 4]> =
            Arc::new(std::array::from_fn(|i| sockets[i].first().cloned()));
        for &(l, _) in &addresses {
            for s in &sockets[l.index()] {
                let ctx = udp::Worker {
                    listener: l,
                    socket: s.clone(),
                    senders: senders.clone(),
                    responder: responder.clone(),
                    limiter: limiter.clone(),
                    stop: stop.clone(),
                    stats: stats.clone(),
                    io: config.udp_io,
                };
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("turnd-udp-{}{}", l.ip, l.port))
                        .spawn(move || ctx.run())?,
                );
            }
        }
    }

    let mut tcp_shutdown = None;
    if config.tcp {
        let mut listeners = vec![];
        for &(l, a) in &addresses {
            listeners.push((l, tcp_listener(a).map_err(|e| annotate(e, "TCP", a))?));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        tcp_shutdown = Some(tx);
        let shared = TcpShared {
            responder: responder.clone(),
            stats: stats.clone(),
            limiter: limiter.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_tcp_connections)),
            per_source: Arc::new(PerSource::new(config.max_tcp_per_source)),
            timeouts: TcpTimeouts {
                idle: config.tcp_idle_timeout,
                frame: config.tcp_frame_timeout,
            },
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        threads.push(
            std::thread::Builder::new()
                .name("turnd-tcp".into())
                .spawn(move || rt.block_on(serve_tcp(listeners, shared, rx)))?,
        );
    }

    Ok(RunningServer {
        addresses,
        stop,
        threads,
        stats,
        tcp_shutdown,
    })
}

fn annotate(e: io::Error, proto: &str, a: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("cannot bind {proto} {a}: {e}"))
}

/// What every TCP accept loop and connection shares.
#[derive(Debug, Clone)]
struct TcpShared {
    responder: Arc<Responder>,
    stats: Arc<Stats>,
    limiter: Arc<RateLimiter>,
    /// Total connection cap.
    permits: Arc<tokio::sync::Semaphore>,
    per_source: Arc<PerSource>,
    timeouts: TcpTimeouts,
}

async fn serve_tcp(
    listeners: Vec<(Listener, StdTcpListener)>,
    shared: TcpShared,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (l, std_listener) in listeners {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot register TCP listener");
                continue;
            }
        };
        tasks.spawn(accept_loop(listener, l, shared.clone()));
    }
    let _ = shutdown.changed().await;
    tasks.abort_all();
}

/// How long the accept loop pauses after an error that is not about one connection (EMFILE,
/// ENFILE, ENOBUFS...): retrying at once would spin at 100% CPU, since the pending connection
/// keeps the listener readable.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `accept` errors about one connection only (it went away before we took it): retry at once.
fn accept_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// At most one log line per `LOG_EVERY`, counting what it did not log in between: a flood of
/// refused connections or failing accepts must not become a flood of log lines.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    next: Option<Instant>,
    suppressed: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(1);

impl LogThrottle {
    /// May a line be logged at `now`? If so, returns how many were suppressed since the last.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accept connections on one listener until the task is aborted.
async fn accept_loop(listener: TcpListener, local: Listener, shared: TcpShared) {
    let mut error_log = LogThrottle::default();
    let mut refuse_log = LogThrottle::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if accept_error_is_transient(&e) => continue,
            Err(e) => {
                if let Some(suppressed) = error_log.ready(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, backoff_ms = ACCEPT_BACKOFF.as_millis(),
                        "TCP accept failed; pausing");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admitted = admit(&shared, peer);
        let (permit, slot) = match admitted {
            Ok(x) => x,
            Err(why) => {
                if let Some(suppressed) = refuse_log.ready(Instant::now()) {
                    tracing::warn!(%peer, why, suppressed, "TCP connection refused");
                }
                // Reset rather than close: no TIME_WAIT left behind on our side per refusal.
                let _ = stream.set_zero_linger();
                drop(stream);
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let r = tcp_connection(stream, peer, local, &shared);
            if let Err(e) = r.await {
                tracing::debug!(%peer, error = %e, "TCP connection closed");
            }
            drop(slot);
            drop(permit);
        });
    }
}

/// May a connection from `peer` be served? Checks the shared rate limiter, then the total and
/// per-source caps; the returned guards hold the connection's place until dropped.
fn admit(
    shared: &TcpShared,
    peer: SocketAddr,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Option<SourceSlot>), &'static str> {
    if !shared.limiter.allow(Instant::now(), peer.ip()) {
        shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err("rate limited");
    }
    let refused = |why| {
        shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
        Err(why)
    };
    let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
        return refused("connection limit reached");
    };
    match PerSource::try_take(&shared.per_source, peer.ip()) {
        Ok(slot) => Ok((permit, slot)),
        Err(()) => refused("per-source connection limit reached"),
    }
}

/// Live TCP connections per source (IPv4 address or IPv6 /64). An entry exists only while a
/// [`SourceSlot`] for it does, and a slot is only taken with a total-cap permit in hand, so the
/// map never holds more than `max_tcp_connections` entries.
#[derive(Debug)]
pub(crate) struct PerSource {
    cap: usize,
    live: Mutex<HashMap<u128, usize>>,
}

/// One connection's place in [`PerSource`]; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    table: Arc<PerSource>,
    key: u128,
}

impl PerSource {
    pub(crate) fn new(cap: usize) -> Self {
        PerSource {
            cap,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Take a place for a connection from `ip`: `Ok(None)` when there is no per-source cap,
    /// `Err` when the source already has `cap` connections.
    pub(crate) fn try_take(table: &Arc<Self>, ip: IpAddr) -> Result<Option<SourceSlot>, ()> {
        if table.cap == 0 {
            return Ok(None);
        }
        let key = source_key(ip);
        let mut live = table.live.lock().unwrap_or_else(PoisonError::into_inner);
        let n = live.entry(key).or_insert(0);
        if *n >= table.cap {
            return Err(());
        }
        *n += 1;
        Ok(Some(SourceSlot {
            table: table.clone(),
            key,
        }))
    }

    /// Live connections from `ip`'s source.
    #[cfg(test)]
    pub(crate) fn live(&self, ip: IpAddr) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(&source_key(ip)).copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut live = self
            .table
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = live.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TcpTimeouts {
    idle: Duration,
    frame: Duration,
}

/// Largest STUN frame accepted on TCP: a Binding request has no business being bigger.
const MAX_TCP_FRAME: usize = 4096;

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: Listener,
    shared: &TcpShared,
) -> io::Result<()> {
    let TcpShared {
        responder,
        stats,
        limiter,
        timeouts: TcpTimeouts {
            idle,
            frame: frame_timeout,
        },
        ..
    } = shared;
    let (idle, frame_timeout) = (*idle, *frame_timeout);
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_TCP_FRAME];
    let mut out = vec![0u8; MAX_TCP_FRAME];
    let mut have = 0;
    // When the partial frame in `buf` began: it must be complete by then + frame_timeout.
    let mut frame_started: Option<Instant> = None;
    loop {
        let wait = match frame_started {
            Some(t) => frame_timeout.saturating_sub(t.elapsed()).min(idle),
            None => idle,
        };
        let n = tokio::time::timeout(wait, stream.read(&mut buf[have..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle or incomplete frame"))??;
        if n == 0 {
            return Ok(());
        }
        have += n;
        frame_started.get_or_insert_with(Instant::now);
        // Process every complete frame in the buffer.
        while let Some(len) = stun::wire::frame_len(&buf[..have]) {
            if len > MAX_TCP_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame too large",
                ));
            }
            if have < len {
                break;
            }
            stats.received.fetch_add(1, Ordering::Relaxed);
            if !limiter.allow(Instant::now(), peer.ip()) {
                stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other("rate limited"));
            }
            match responder.handle(Transport::Tcp, local, peer, &buf[..len], &mut out) {
                Ok(reply) => {
                    count_reply(stats, reply.error);
                    stream.write_all(&out[..reply.len]).await?;
                }
                Err(why) => {
                    // A byte stream that is not STUN cannot be re-synchronised: close it.
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{why:?}"),
                    ));
                }
            }
            buf.copy_within(len..have, 0);
            have -= len;
            // What is left, if anything, is the start of the next frame.
            frame_started = (have > 0).then(Instant::now);
        }
    }
}

pub(crate) fn count_reply(stats: &Stats, error: Option<u16>) {
    if error.is_some() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unspecified addresses cannot be announced in RESPONSE-ORIGIN / OTHER-ADDRESS.
pub fn check_announceable(ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        Err(format!(
            "{ip} is not a usable address: RFC 5780 responses announce the exact address they \
             come from, so listen on a concrete IP"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_cap_counts_live_connections_and_forgets_idle_sources() {
        let table = Arc::new(PerSource::new(2));
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        let a1 = PerSource::try_take(&table, a).unwrap();
        let a2 = PerSource::try_take(&table, a).unwrap();
        assert!(
            PerSource::try_take(&table, a).is_err(),
            "third from one source"
        );
        let b1 = PerSource::try_take(&table, b).unwrap();
        assert_eq!((table.live(a), table.live(b), table.sources()), (2, 1, 2));
        drop(a1);
        let a3 = PerSource::try_take(&table, a).unwrap();
        assert!(PerSource::try_take(&table, a).is_err());
        // IPv6 sources share their /64.
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        let x1 = PerSource::try_take(&table, x).unwrap();
        let y1 = PerSource::try_take(&table, y).unwrap();
        assert!(PerSource::try_take(&table, x).is_err());
        drop((a2, a3, b1, x1, y1));
        assert_eq!(table.sources(), 0, "no entry outlives its connections");
        // 0: no per-source cap, nothing tracked.
        let open = Arc::new(PerSource::new(0));
        let slots: Vec<_> = (0..100)
            .map(|_| PerSource::try_take(&open, a).unwrap())
            .collect();
        assert!(slots.iter().all(Option::is_none));
        assert_eq!(open.sources(), 0);
    }

    #[test]
    fn log_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = LogThrottle::default();
        assert_eq!(t.ready(t0), Some(0));
        assert_eq!(t.ready(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.ready(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.ready(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.ready(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.ready(t0 + Duration::from_secs(5)), Some(1));
    }
}
