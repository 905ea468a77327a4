//! Drivers binding the sans-IO [`Responder`] to real sockets: UDP worker threads (blocking
//! sockets, one or more per listening address) and a small tokio runtime for TCP.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::binding::{Listener, Responder, ResponderConfig, Transport};
use crate::ratelimit::{DEFAULT_BUCKETS, RateLimiter};
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
    /// Dropped by the rate limiter.
    pub rate_limited: AtomicU64,
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
                    limiter: RateLimiter::new(
                        Instant::now(),
                        config.rate_limit,
                        config.rate_burst,
                        DEFAULT_BUCKETS,
                    ),
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
        let responder = responder.clone();
        let stats = stats.clone();
        let cfg = config.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        threads.push(
            std::thread::Builder::new()
                .name("turnd-tcp".into())
                .spawn(move || rt.block_on(serve_tcp(listeners, responder, stats, cfg, rx)))?,
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

async fn serve_tcp(
    listeners: Vec<(Listener, StdTcpListener)>,
    responder: Arc<Responder>,
    stats: Arc<Stats>,
    cfg: ServerConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_tcp_connections));
    let limiter = Arc::new(std::sync::Mutex::new(RateLimiter::new(
        Instant::now(),
        cfg.rate_limit,
        cfg.rate_burst,
        DEFAULT_BUCKETS,
    )));
    let mut tasks = tokio::task::JoinSet::new();
    for (l, std_listener) in listeners {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot register TCP listener");
                continue;
            }
        };
        let responder = responder.clone();
        let stats = stats.clone();
        let permits = permits.clone();
        let limiter = limiter.clone();
        let timeouts = TcpTimeouts {
            idle: cfg.tcp_idle_timeout,
            frame: cfg.tcp_frame_timeout,
        };
        tasks.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "TCP connection limit reached; closing");
                    continue;
                };
                let responder = responder.clone();
                let stats = stats.clone();
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let r = tcp_connection(stream, peer, l, &responder, &stats, &limiter, timeouts);
                    if let Err(e) = r.await {
                        tracing::debug!(%peer, error = %e, "TCP connection closed");
                    }
                    drop(permit);
                });
            }
        });
    }
    let _ = shutdown.changed().await;
    tasks.abort_all();
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
    responder: &Responder,
    stats: &Stats,
    limiter: &std::sync::Mutex<RateLimiter>,
    timeouts: TcpTimeouts,
) -> io::Result<()> {
    let TcpTimeouts {
        idle,
        frame: frame_timeout,
    } = timeouts;
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
            let allowed = limiter
                .lock()
                .map(|mut l| l.allow(Instant::now(), peer.ip()))
                .unwrap_or(false);
            if !allowed {
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
