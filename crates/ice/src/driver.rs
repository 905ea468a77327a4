//! A tokio driver for the sans-IO [`Agent`]: one UDP socket per local address, one connection
//! per TURN server (UDP, TCP or TLS), and application datagrams over the selected pair.
//!
//! ```text
//! let mut d = Driver::bind(config, &addrs, tls).await?;   // sockets bound, hosts added
//! d.agent().gather(Instant::now());
//! loop {
//!     tokio::select! {
//!         e = d.next_event() => ...,         // LocalCandidate, StateChanged, Data...
//!         line = signaling.recv() => d.agent().add_remote_candidate(..),
//!     }
//! }
//! d.send(b"data")?;
//! ```
//!
//! [`Driver::next_event`] is cancel-safe: every send is a non-blocking `try_send` (a datagram
//! that finds the socket buffer full is dropped, as UDP may), TCP/TLS writes go through a
//! writer task, and all reads come from reader tasks over one channel.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;
use turn::client::{StreamDecoder, Transport};

use crate::{Agent, Config, Error, Event, Via};

pub use turn::client::driver::{TlsRoots, TlsSettings};

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A socket could not be bound.
    #[error("cannot bind a UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// No local address to use.
    #[error("no usable local address")]
    NoAddress,
    /// The agent refused something.
    #[error(transparent)]
    Agent(#[from] Error),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
}

enum Input {
    Host {
        local: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Turn {
        index: usize,
        bytes: Vec<u8>,
    },
    TurnLost(usize),
}

enum TurnOut {
    Udp(std::net::UdpSocket),
    Stream(mpsc::UnboundedSender<Vec<u8>>),
    Down,
}

/// The agent on real sockets. See the module docs.
pub struct Driver {
    agent: Agent,
    /// Host sockets, for sending: plain non-blocking std sockets (a tokio socket's
    /// `try_send_to` reports WouldBlock until the reactor has seen it writable).
    sockets: Vec<(SocketAddr, std::net::UdpSocket)>,
    turns: Vec<TurnOut>,
    rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    tasks: Vec<JoinHandle<()>>,
    events: std::collections::VecDeque<Event>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("sockets", &self.sockets.len())
            .field("turns", &self.turns.len())
            .field("state", &self.agent.state())
            .finish()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The host addresses of this machine's interfaces that are up, IPv4 and IPv6, no IPv6
/// link-local: the loopback addresses only when `loopback`, otherwise every other one.
pub fn interface_addresses(loopback: bool) -> Vec<IpAddr> {
    let mut v = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let flags = ifa.flags;
            if !flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
                continue;
            }
            let Some(a) = ifa.address else { continue };
            let ip = if let Some(s) = a.as_sockaddr_in() {
                IpAddr::V4(s.ip())
            } else if let Some(s) = a.as_sockaddr_in6() {
                IpAddr::V6(s.ip())
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(x) if (x.segments()[0] & 0xffc0) == 0xfe80);
            if link_local || ip.is_loopback() != loopback {
                continue;
            }
            if !v.contains(&ip) {
                v.push(ip);
            }
        }
    }
    v
}

impl Driver {
    /// Bind one UDP socket per address (ephemeral port), connect to each TURN server of
    /// `config`, and add the host candidates.
    pub async fn bind(
        config: Config,
        addrs: &[IpAddr],
        tls: Option<TlsSettings>,
    ) -> Result<Driver, DriverError> {
        if addrs.is_empty() && config.turn_servers.is_empty() {
            return Err(DriverError::NoAddress);
        }
        let turn_servers = config.turn_servers.clone();
        let agent = Agent::new(config)?;
        let (tx, rx) = mpsc::channel(4096);
        let mut d = Driver {
            agent,
            sockets: Vec::new(),
            turns: Vec::new(),
            rx,
            tx,
            tasks: Vec::new(),
            events: Default::default(),
        };
        let now = Instant::now();
        for ip in addrs {
            let addr = SocketAddr::new(*ip, 0);
            let (send, recv) = bind_pair(addr)?;
            let local = send
                .local_addr()
                .map_err(|source| DriverError::Bind { addr, source })?;
            d.agent.add_host(now, local)?;
            d.spawn_udp_reader(recv, Some(local), None);
            d.sockets.push((local, send));
        }
        for (i, t) in turn_servers.iter().enumerate() {
            let out = match t.transport {
                Transport::Udp => {
                    let any = match t.addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    };
                    let addr = SocketAddr::new(any, 0);
                    let (send, recv) = bind_pair(addr)?;
                    d.spawn_udp_reader(recv, None, Some(i));
                    TurnOut::Udp(send)
                }
                Transport::Tcp | Transport::Tls => {
                    match connect_stream(t.addr, t.transport, tls.as_ref()).await {
                        Ok((r, w)) => TurnOut::Stream(d.spawn_stream(i, r, w)),
                        Err(e) => {
                            debug!(server = %t.addr, %e, "TURN connection failed");
                            let _ = d.tx.try_send(Input::TurnLost(i));
                            TurnOut::Down
                        }
                    }
                }
            };
            d.turns.push(out);
        }
        Ok(d)
    }

    fn spawn_udp_reader(
        &mut self,
        s: Arc<UdpSocket>,
        host: Option<SocketAddr>,
        turn: Option<usize>,
    ) {
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = match s.recv_from(&mut buf).await {
                    Ok(x) => x,
                    // ICMP port unreachable from an earlier send: keep reading.
                    Err(_) => continue,
                };
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                let input = match (host, turn) {
                    (Some(local), _) => Input::Host { local, from, bytes },
                    (None, Some(index)) => Input::Turn { index, bytes },
                    _ => continue,
                };
                if tx.send(input).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn spawn_stream(
        &mut self,
        index: usize,
        mut r: Box<dyn AsyncRead + Send + Unpin>,
        mut w: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> mpsc::UnboundedSender<Vec<u8>> {
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut dec = StreamDecoder::new();
            let mut buf = vec![0u8; 16384];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                dec.push(buf.get(..n).unwrap_or_default());
                loop {
                    match dec.next_frame() {
                        Ok(Some(f)) => {
                            if tx.send(Input::Turn { index, bytes: f }).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = tx.send(Input::TurnLost(index)).await;
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Input::TurnLost(index)).await;
        }));
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.tasks.push(tokio::spawn(async move {
            while let Some(b) = wrx.recv().await {
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
        }));
        wtx
    }

    /// The agent (to signal, add remote candidates, read stats).
    pub fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    /// The bound host sockets' addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }

    fn flush(&mut self) {
        while let Some(t) = self.agent.poll_transmit() {
            match t.via {
                Via::Host(local) => {
                    if let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == local) {
                        if let Err(e) = s.send_to(&t.payload, t.destination) {
                            debug!(%e, dst = %t.destination, "send failed");
                        }
                    }
                }
                Via::Turn(i) => match self.turns.get(i) {
                    Some(TurnOut::Udp(s)) => {
                        if let Err(e) = s.send_to(&t.payload, t.destination) {
                            debug!(%e, "send to TURN server failed");
                        }
                    }
                    Some(TurnOut::Stream(w)) => {
                        let _ = w.send(t.payload);
                    }
                    _ => {}
                },
            }
        }
        while let Some(e) = self.agent.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Run I/O and timers until the agent has an event. Cancel-safe.
    pub async fn next_event(&mut self) -> Event {
        loop {
            self.flush();
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            let deadline = self.agent.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = self.rx.recv() => {
                    let now = Instant::now();
                    match input {
                        Some(Input::Host { local, from, bytes }) => {
                            self.agent.handle_packet(now, local, from, &bytes)
                        }
                        Some(Input::Turn { index, bytes }) => {
                            self.agent.handle_turn_input(now, index, &bytes)
                        }
                        Some(Input::TurnLost(i)) => {
                            if let Some(t) = self.turns.get_mut(i) {
                                *t = TurnOut::Down;
                            }
                            self.agent.handle_turn_connection_lost(now, i)
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
                () = sleep => self.agent.handle_timeout(Instant::now()),
            }
        }
    }

    /// Send application data over the selected pair.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.agent.send(Instant::now(), data)?;
        self.flush();
        Ok(())
    }

    /// Apply a change to the agent now and flush what it queued (signaling input).
    pub fn with_agent<T>(&mut self, f: impl FnOnce(&mut Agent, Instant) -> T) -> T {
        let r = f(&mut self.agent, Instant::now());
        self.flush();
        r
    }
}

/// A non-blocking std socket for sending and a tokio clone of it for receiving.
fn bind_pair(addr: SocketAddr) -> Result<(std::net::UdpSocket, Arc<UdpSocket>), DriverError> {
    let err = |source| DriverError::Bind { addr, source };
    let s = std::net::UdpSocket::bind(addr).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    let recv = UdpSocket::from_std(s.try_clone().map_err(err)?).map_err(err)?;
    Ok((s, Arc::new(recv)))
}

type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

async fn connect_stream(
    server: SocketAddr,
    transport: Transport,
    tls: Option<&TlsSettings>,
) -> Result<Halves, DriverError> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(server),
    )
    .await
    .map_err(|_| DriverError::Tls(format!("connect to {server} timed out")))?
    .map_err(|e| DriverError::Tls(format!("connect to {server}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    if transport == Transport::Tcp {
        let (r, w) = tokio::io::split(tcp);
        return Ok((Box::new(r), Box::new(w)));
    }
    let settings = tls.ok_or_else(|| DriverError::Tls("turns: without TLS settings".into()))?;
    let stream = turn::client::driver::connect_tls(tcp, settings)
        .await
        .map_err(DriverError::Tls)?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w)))
}
