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
use crate::relay::driver::{Pools, StreamContext, TurnContext};
use crate::relay::{
    self, AuthConfig, Authenticator, Cidr, Metrics, PeerPolicy, Quota, RelayConfig,
};
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
    /// TURN relay; `None`: a Binding-only server.
    pub turn: Option<TurnConfig>,
    /// TLS listener (TURN over TLS, and Binding).
    pub tls: Option<TlsConfig>,
    /// Prometheus metrics endpoint (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
}

/// Allocations per user unless configured (`--user-quota`).
pub const DEFAULT_USER_QUOTA: usize = 10;
/// Allocations in total unless configured (`--total-quota`).
pub const DEFAULT_TOTAL_QUOTA: usize = 10_000;

/// TURN settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Lifetimes, caps and bandwidth.
    pub relay: RelayConfig,
    /// REALM.
    pub realm: String,
    /// Static users (name, password).
    pub users: Vec<(String, String)>,
    /// REST API shared secret.
    pub rest_secret: Option<String>,
    /// Nonce lifetime.
    pub nonce_lifetime: Duration,
    /// IPv4 relay address.
    pub relay_ip: Option<IpAddr>,
    /// IPv6 relay address.
    pub relay_ip6: Option<IpAddr>,
    /// Relay port range.
    pub ports: std::ops::RangeInclusive<u16>,
    /// Peer allow list.
    pub allow: Vec<Cidr>,
    /// Peer deny list.
    pub deny: Vec<Cidr>,
    /// Deny private, loopback, link-local... peers unless allowed (default true).
    pub deny_defaults: bool,
    /// Allocations per user (0: no limit; default 10). REST credentials `expiry:user` count
    /// for `user`.
    pub user_quota: usize,
    /// Allocations in total (0: no limit; default 10000).
    pub total_quota: usize,
}

impl TurnConfig {
    /// Defaults: realm "natscope", ports 49152-65535, [`DEFAULT_USER_QUOTA`] allocations per
    /// user and [`DEFAULT_TOTAL_QUOTA`] in all, nothing else.
    pub fn new() -> Self {
        TurnConfig {
            relay: RelayConfig::default(),
            realm: "natscope".into(),
            users: vec![],
            rest_secret: None,
            nonce_lifetime: relay::auth::DEFAULT_NONCE_LIFETIME,
            relay_ip: None,
            relay_ip6: None,
            ports: 49152..=65535,
            allow: vec![],
            deny: vec![],
            deny_defaults: true,
            user_quota: DEFAULT_USER_QUOTA,
            total_quota: DEFAULT_TOTAL_QUOTA,
        }
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// TLS listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Address to listen on (port 0: any).
    pub listen: SocketAddr,
    /// Certificate chain, PEM.
    pub cert: std::path::PathBuf,
    /// Private key, PEM.
    pub key: std::path::PathBuf,
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
            turn: None,
            tls: None,
            metrics: None,
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
    turn: Option<TurnContext>,
    tls_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

impl RunningServer {
    /// TURN counters, when TURN is enabled.
    pub fn turn_metrics(&self) -> Option<&Arc<Metrics>> {
        self.turn.as_ref().map(|t| &t.metrics)
    }

    /// Live allocations in the whole server (TURN enabled).
    pub fn allocations(&self) -> usize {
        self.turn.as_ref().map_or(0, |t| t.shared.quota.live())
    }

    /// The bound TLS address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

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

/// Build the TURN state shared by every driver.
fn turn_context(
    t: &TurnConfig,
    listeners: &[(Listener, SocketAddr)],
    extra_service: &[SocketAddr],
) -> io::Result<TurnContext> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let now = Instant::now();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut nonce_key = [0u8; 32];
    rand::fill(&mut nonce_key);
    let auth = Authenticator::new(AuthConfig {
        realm: t.realm.clone(),
        users: t.users.clone(),
        rest_secret: t.rest_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        nonce_key,
        nonce_lifetime: t.nonce_lifetime,
        epoch: now,
        unix_at_epoch: unix,
    })
    .map_err(|e| invalid(e.to_string()))?;
    let mut policy = PeerPolicy::new();
    policy.allow = t.allow.clone();
    policy.deny = t.deny.clone();
    policy.deny_defaults = t.deny_defaults;
    policy.relay_ips = t.relay_ip.into_iter().chain(t.relay_ip6).collect();
    policy.relay_ports = Some(t.ports.clone());
    policy.service = listeners
        .iter()
        .map(|(_, a)| *a)
        .chain(extra_service.iter().copied())
        .collect();
    let mut relay_cfg = t.relay.clone();
    if relay_cfg.seed == 0 {
        relay_cfg.seed = rand::random();
    }
    let pools = Pools::new(t.relay_ip, t.relay_ip6, t.ports.clone(), rand::random());
    Ok(TurnContext {
        shared: Arc::new(relay::Shared {
            config: relay_cfg,
            auth,
            policy,
            quota: Quota::new(t.user_quota, t.total_quota),
        }),
        metrics: Arc::new(Metrics::default()),
        pools: Arc::new(Mutex::new(pools)),
    })
}

fn tls_acceptor(t: &TlsConfig) -> io::Result<tokio_rustls::TlsAcceptor> {
    let bad = |what: &str, p: &std::path::Path, e: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {}: {e}", p.display()),
        )
    };
    let certs = {
        let f = std::fs::File::open(&t.cert)
            .map_err(|e| bad("cannot read certificate", &t.cert, e.to_string()))?;
        rustls_pemfile::certs(&mut io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("bad certificate PEM", &t.cert, e.to_string()))?
    };
    if certs.is_empty() {
        return Err(bad("no certificate in", &t.cert, "empty".into()));
    }
    let key = {
        let f = std::fs::File::open(&t.key)
            .map_err(|e| bad("cannot read key", &t.key, e.to_string()))?;
        rustls_pemfile::private_key(&mut io::BufReader::new(f))
            .map_err(|e| bad("bad key PEM", &t.key, e.to_string()))?
            .ok_or_else(|| bad("no private key in", &t.key, "empty".into()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key do not fit", &t.cert, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
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

    // TLS and metrics listeners are bound first so the peer policy knows their addresses.
    let tls = match &config.tls {
        Some(t) => {
            if config.turn.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs TURN: configure users or an auth secret",
                ));
            }
            let acceptor = tls_acceptor(t)?;
            let l = tcp_listener(t.listen).map_err(|e| annotate(e, "TLS", t.listen))?;
            Some((l, acceptor))
        }
        None => None,
    };
    let tls_addr = match &tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let metrics_listener = match config.metrics {
        Some(a) => Some(tcp_listener(a).map_err(|e| annotate(e, "metrics", a))?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let turn = match &config.turn {
        Some(t) => {
            let extra: Vec<SocketAddr> = tls_addr.into_iter().chain(metrics_addr).collect();
            Some(turn_context(t, &addresses, &extra)?)
        }
        None => None,
    };
    let instances = Arc::new(AtomicU64::new(1));

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
        for &(l, a) in &addresses {
            for s in &sockets[l.index()] {
                let name = format!("turnd-udp-{}{}", l.ip, l.port);
                let builder = std::thread::Builder::new().name(name);
                if let Some(turn) = &turn {
                    let w = relay::driver::UdpWorker {
                        listener: l,
                        local: a,
                        socket: s.clone(),
                        senders: senders.clone(),
                        responder: responder.clone(),
                        limiter: limiter.clone(),
                        stop: stop.clone(),
                        stats: stats.clone(),
                        turn: turn.clone(),
                        instance: instances.fetch_add(1, Ordering::Relaxed),
                    };
                    threads.push(builder.spawn(move || w.run())?);
                    continue;
                }
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
                threads.push(builder.spawn(move || ctx.run())?);
            }
        }
    }

    let mut tcp_shutdown = None;
    if config.tcp || tls.is_some() || metrics_listener.is_some() {
        let mut listeners = vec![];
        if config.tcp {
            for &(l, a) in &addresses {
                listeners.push((l, tcp_listener(a).map_err(|e| annotate(e, "TCP", a))?));
            }
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
            turn: turn.clone().map(|t| StreamContext {
                turn: t,
                responder: responder.clone(),
                stats: stats.clone(),
                limiter: limiter.clone(),
                idle: config.tcp_idle_timeout,
                frame: config.tcp_frame_timeout,
            }),
            instances: instances.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let metrics =
            metrics_listener.map(|l| (l, turn.as_ref().map(|t| t.metrics.clone()), stats.clone()));
        threads.push(
            std::thread::Builder::new()
                .name("turnd-tcp".into())
                .spawn(move || rt.block_on(serve_tcp(listeners, tls, metrics, shared, rx)))?,
        );
    }

    Ok(RunningServer {
        addresses,
        stop,
        threads,
        stats,
        tcp_shutdown,
        turn,
        tls_addr,
        metrics_addr,
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
    /// TURN over TCP/TLS, when enabled.
    turn: Option<StreamContext>,
    /// Numbers cores.
    instances: Arc<AtomicU64>,
}

type MetricsEndpoint = (StdTcpListener, Option<Arc<Metrics>>, Arc<Stats>);

async fn serve_tcp(
    listeners: Vec<(Listener, StdTcpListener)>,
    tls: Option<(StdTcpListener, tokio_rustls::TlsAcceptor)>,
    metrics: Option<MetricsEndpoint>,
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
        tasks.spawn(accept_loop(listener, l, shared.clone(), None));
    }
    if let Some((std_listener, acceptor)) = tls {
        match TcpListener::from_std(std_listener) {
            Ok(listener) => {
                tasks.spawn(accept_loop(
                    listener,
                    Listener::PRIMARY,
                    shared.clone(),
                    Some(acceptor),
                ));
            }
            Err(e) => tracing::error!(error = %e, "cannot register TLS listener"),
        }
    }
    if let Some((std_listener, m, stats)) = metrics {
        match TcpListener::from_std(std_listener) {
            Ok(listener) => {
                tasks.spawn(serve_metrics(listener, m, stats));
            }
            Err(e) => tracing::error!(error = %e, "cannot register metrics listener"),
        }
    }
    let _ = shutdown.changed().await;
    // Aborting the accept loops drops their connection tasks' handles only; the runtime is
    // dropped with the thread, which cancels the connections and frees their relay sockets.
    tasks.abort_all();
}

/// A minimal HTTP/1.1 server for `GET /metrics` (Prometheus text format).
async fn serve_metrics(listener: TcpListener, metrics: Option<Arc<Metrics>>, stats: Arc<Stats>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let metrics = metrics.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 2048];
            let mut have = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while have < req.len() {
                    let n = stream.read(&mut req[have..]).await?;
                    if n == 0 {
                        break;
                    }
                    have += n;
                    if req[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = &req[..have];
            let (status, body) =
                if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
                    ("200 OK", render_metrics(metrics.as_deref(), &stats))
                } else {
                    ("404 Not Found", "only GET /metrics here\n".to_owned())
                };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The metrics page: TURN counters plus the Binding server's.
pub fn render_metrics(metrics: Option<&Metrics>, stats: &Stats) -> String {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let extra = [
        (
            "turnd_received_total",
            "Datagrams and frames received from clients.",
            l(&stats.received),
        ),
        (
            "turnd_binding_answered_total",
            "Binding success responses.",
            l(&stats.answered),
        ),
        (
            "turnd_binding_errors_total",
            "Binding error responses.",
            l(&stats.errors),
        ),
        (
            "turnd_malformed_dropped_total",
            "Client packets dropped by the Binding path.",
            l(&stats.dropped),
        ),
        (
            "turnd_rate_limited_total",
            "Packets and connections refused by the rate limiter.",
            l(&stats.rate_limited),
        ),
        (
            "turnd_tcp_refused_total",
            "TCP connections refused by the connection caps.",
            l(&stats.tcp_refused),
        ),
    ];
    match metrics {
        Some(m) => m.render(&extra),
        None => Metrics::default().render(&extra),
    }
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
async fn accept_loop(
    listener: TcpListener,
    local: Listener,
    shared: TcpShared,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
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
        let tls = tls.clone();
        let server_addr = listener.local_addr().unwrap_or(peer);
        tokio::spawn(async move {
            let r = match (&shared.turn, tls) {
                (Some(ctx), tls) => {
                    let instance = shared.instances.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let transport = if tls.is_some() {
                        relay::Transport::Tls
                    } else {
                        relay::Transport::Tcp
                    };
                    let five = relay::FiveTuple {
                        client: peer,
                        server: server_addr,
                        transport,
                    };
                    match tls {
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                shared.timeouts.frame,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(s)) => {
                                    relay::driver::stream_connection(
                                        s,
                                        five,
                                        local,
                                        ctx.clone(),
                                        instance,
                                    )
                                    .await
                                }
                                Ok(Err(e)) => Err(e),
                                Err(_) => {
                                    Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))
                                }
                            }
                        }
                        None => {
                            relay::driver::stream_connection(
                                stream,
                                five,
                                local,
                                ctx.clone(),
                                instance,
                            )
                            .await
                        }
                    }
                }
                (None, _) => tcp_connection(stream, peer, local, &shared).await,
            };
            if let Err(e) = r {
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
