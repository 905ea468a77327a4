//! A tokio driver for the sans-IO [`Client`]: one socket (UDP, TCP or TLS) to the server, one
//! task that feeds it and fires its timers, and an async API on top.
//!
//! ```text
//! let turn = TurnClient::connect(config, tls, seed).await?;   // allocates
//! turn.bind_channel(peer).await?;                             // or create_permission
//! turn.send_to(peer, b"ping").await?;
//! let (from, data) = turn.recv().await.unwrap();
//! turn.close().await?;                                        // deallocates
//! ```
//!
//! Datagrams from peers are queued (up to [`DATA_QUEUE`]) and dropped beyond that, as a UDP
//! socket would; every other [`Event`] is also published on a broadcast channel
//! ([`TurnClient::events`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Client, ClientError, Config, Event, Request, StreamDecoder, Transport};

/// Peer datagrams buffered for [`TurnClient::recv`] before new ones are dropped.
pub const DATA_QUEUE: usize = 4096;
/// How long a TCP or TLS connection may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the trust for the server's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRoots {
    /// CA certificates (PEM) the server's chain must lead to.
    CaFile(PathBuf),
    /// INSECURE: accept any certificate. For self-signed test servers only; anyone on the path
    /// can impersonate the server.
    Insecure,
}

/// TLS settings for [`Transport::Tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The name checked against the certificate and sent as SNI (a DNS name or an IP address).
    pub server_name: String,
    /// Trust anchors.
    pub roots: TlsRoots,
}

/// Why the driver failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The server could not be reached (socket, connect or TLS handshake failure).
    #[error("cannot reach the TURN server {server}: {source}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// The TLS settings are unusable (CA file, server name).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server answered with an error, or did not answer (see [`ClientError`]).
    #[error(transparent)]
    Turn(#[from] ClientError),
    /// The allocation is gone (closed, lost or expired) or the driver stopped.
    #[error("the allocation is closed")]
    Closed,
}

impl DriverError {
    /// True when the server could not be reached or refused the allocation (the `turnc` exit
    /// status 3), rather than a failure later on.
    pub fn is_unreachable_or_refused(&self) -> bool {
        matches!(self, DriverError::Connect { .. } | DriverError::Turn(_))
    }
}

type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;
type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;

enum Writer {
    Udp(Arc<UdpSocket>),
    Stream(tokio::sync::Mutex<BoxedWrite>),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::Udp(s) => f.debug_tuple("Udp").field(s).finish(),
            Writer::Stream(_) => f.write_str("Stream"),
        }
    }
}

enum Reader {
    Udp(Arc<UdpSocket>),
    Stream(BoxedRead, StreamDecoder),
}

#[derive(Debug)]
struct Shared {
    core: Mutex<Client>,
    wake: Notify,
    events: broadcast::Sender<Event>,
    writer: Writer,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Client> {
        // A panic while holding the lock cannot leave the core half-updated in a way that
        // matters more than stopping: keep going with the inner value.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send everything the core has queued.
    async fn flush(&self) -> io::Result<()> {
        loop {
            let batch: Vec<Vec<u8>> = {
                let mut core = self.core();
                std::iter::from_fn(|| core.poll_transmit().map(|t| t.payload)).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            match &self.writer {
                Writer::Udp(s) => {
                    for p in batch {
                        if let Err(e) = s.send(&p).await {
                            // ICMP errors from earlier sends surface here; UDP carries on.
                            debug!("UDP send to the TURN server failed: {e}");
                        }
                    }
                }
                Writer::Stream(w) => {
                    let mut w = w.lock().await;
                    for p in batch {
                        w.write_all(&p).await?;
                    }
                    w.flush().await?;
                }
            }
        }
    }
}

/// A TURN allocation driven on tokio. Dropping it stops the driver without deallocating; call
/// [`close`](TurnClient::close) to deallocate.
#[derive(Debug)]
pub struct TurnClient {
    shared: Arc<Shared>,
    data: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    task: JoinHandle<()>,
    local: SocketAddr,
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    allocation_time: Duration,
}

impl Drop for TurnClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TurnClient {
    /// Connect to `config.server` over `config.transport` and allocate. `tls` is required for
    /// [`Transport::Tls`]. Transaction IDs come from a generator seeded with `seed`.
    pub async fn connect(
        config: Config,
        tls: Option<TlsSettings>,
        seed: u64,
    ) -> Result<TurnClient, DriverError> {
        let server = config.server;
        let connect_err = |source| DriverError::Connect { server, source };
        let started = Instant::now();
        let (reader, writer, local) = match config.transport {
            Transport::Udp => {
                let any = match server.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let s = UdpSocket::bind((any, 0)).await.map_err(connect_err)?;
                s.connect(server).await.map_err(connect_err)?;
                let local = s.local_addr().map_err(connect_err)?;
                let s = Arc::new(s);
                (Reader::Udp(s.clone()), Writer::Udp(s), local)
            }
            Transport::Tcp | Transport::Tls => {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
                    .await
                    .map_err(|_| connect_err(io::ErrorKind::TimedOut.into()))?
                    .map_err(connect_err)?;
                tcp.set_nodelay(true).map_err(connect_err)?;
                let local = tcp.local_addr().map_err(connect_err)?;
                if config.transport == Transport::Tcp {
                    let (r, w) = tokio::io::split(tcp);
                    let (r, w): (BoxedRead, BoxedWrite) = (Box::new(r), Box::new(w));
                    let reader = Reader::Stream(r, StreamDecoder::new());
                    (reader, Writer::Stream(tokio::sync::Mutex::new(w)), local)
                } else {
                    let tls = tls.ok_or_else(|| {
                        DriverError::Tls("TLS transport without TLS settings".into())
                    })?;
                    let stream = tls::connect(tcp, &tls).await.map_err(|e| match e {
                        tls::Error::Setup(m) => DriverError::Tls(m),
                        tls::Error::Io(e) => connect_err(e),
                    })?;
                    let (r, w) = tokio::io::split(stream);
                    let (r, w): (BoxedRead, BoxedWrite) = (Box::new(r), Box::new(w));
                    let reader = Reader::Stream(r, StreamDecoder::new());
                    (reader, Writer::Stream(tokio::sync::Mutex::new(w)), local)
                }
            }
        };

        let (events, mut rx) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            core: Mutex::new(Client::with_seed(config, seed)),
            wake: Notify::new(),
            events,
            writer,
        });
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let task = tokio::spawn(run(shared.clone(), reader, data_tx));
        shared.core().allocate(Instant::now())?;
        shared.wake.notify_one();
        let mut client = TurnClient {
            shared,
            data: tokio::sync::Mutex::new(data_rx),
            task,
            local,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            mapped: None,
            allocation_time: Duration::ZERO,
        };
        loop {
            match next_event(&mut rx).await {
                Some(Event::Allocated {
                    relayed, mapped, ..
                }) => {
                    client.relayed = relayed;
                    client.mapped = mapped;
                    client.allocation_time = started.elapsed();
                    return Ok(client);
                }
                Some(Event::Closed { reason }) => {
                    return Err(reason.map_or(DriverError::Closed, DriverError::Turn));
                }
                Some(_) => {}
                None => return Err(DriverError::Closed),
            }
        }
    }

    /// The local address of the socket to the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// XOR-RELAYED-ADDRESS: where peers send to.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    /// XOR-MAPPED-ADDRESS: this client as the server saw it.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// From the start of [`connect`](TurnClient::connect) to the allocation (connection and
    /// TLS handshake included).
    pub fn allocation_time(&self) -> Duration {
        self.allocation_time
    }

    /// Every event but [`Event::Data`], from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Install a permission for `peer`'s IP address and wait for the server's answer.
    pub async fn create_permission(&self, peer: SocketAddr) -> Result<(), DriverError> {
        let mut rx = self.events();
        {
            let mut core = self.shared.core();
            if core.has_permission(peer.ip()) {
                return Ok(());
            }
            core.create_permission(Instant::now(), peer)?;
        }
        self.kick().await;
        loop {
            match next_event(&mut rx).await {
                Some(Event::PermissionCreated { peer: ip }) if ip == peer.ip() => return Ok(()),
                Some(Event::Failed {
                    request: Request::CreatePermission { peer: p },
                    error,
                }) if p.ip() == peer.ip() => return Err(error.into()),
                Some(Event::Closed { .. }) | None => return Err(DriverError::Closed),
                Some(_) => {}
            }
        }
    }

    /// Bind a channel to `peer` and wait for the server's answer; returns the channel number.
    pub async fn bind_channel(&self, peer: SocketAddr) -> Result<u16, DriverError> {
        let mut rx = self.events();
        {
            let mut core = self.shared.core();
            if let Some((n, true)) = core.channel(peer) {
                return Ok(n);
            }
            core.bind_channel(Instant::now(), peer)?;
        }
        self.kick().await;
        loop {
            match next_event(&mut rx).await {
                Some(Event::ChannelBound { peer: p, channel }) if p == peer => return Ok(channel),
                Some(Event::Failed {
                    request: Request::ChannelBind { peer: p, .. },
                    error,
                }) if p == peer => return Err(error.into()),
                Some(Event::Closed { .. }) | None => return Err(DriverError::Closed),
                Some(_) => {}
            }
        }
    }

    /// Send `data` to `peer` through the relay (ChannelData when a channel is bound, a Send
    /// indication otherwise; see [`Client::send_to`]).
    pub async fn send_to(&self, peer: SocketAddr, data: &[u8]) -> Result<(), DriverError> {
        self.shared.core().send_to(Instant::now(), peer, data)?;
        self.kick().await;
        Ok(())
    }

    /// The next datagram from a peer; `None` once the allocation is gone.
    pub async fn recv(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.data.lock().await.recv().await
    }

    /// Refresh the allocation now.
    pub async fn refresh(&self) -> Result<(), DriverError> {
        self.shared.core().refresh(Instant::now())?;
        self.kick().await;
        Ok(())
    }

    /// Deallocate (Refresh with LIFETIME 0) and wait for the answer (or the transaction
    /// timeout), then stop the driver.
    pub async fn close(self) -> Result<(), DriverError> {
        let mut rx = self.events();
        if self.shared.core().state() == super::State::Closed {
            return Ok(());
        }
        self.shared.core().close(Instant::now());
        self.kick().await;
        loop {
            match next_event(&mut rx).await {
                Some(Event::Closed { reason: None }) | None => return Ok(()),
                Some(Event::Closed {
                    reason: Some(error),
                }) => return Err(error.into()),
                Some(_) => {}
            }
        }
    }

    /// Send what the core queued from the caller's task (no hop through the driver task), and
    /// let the driver re-arm its timer.
    async fn kick(&self) {
        if let Err(e) = self.shared.flush().await {
            debug!("write to the TURN server failed: {e}");
        }
        self.shared.wake.notify_one();
    }
}

/// The next event from a broadcast receiver, skipping over a lag.
async fn next_event(rx: &mut broadcast::Receiver<Event>) -> Option<Event> {
    loop {
        match rx.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!("missed {n} TURN client events");
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// The driver task: reads from the server, fires timers, publishes events; ends after
/// [`Event::Closed`].
async fn run(shared: Arc<Shared>, mut reader: Reader, data: mpsc::Sender<(SocketAddr, Vec<u8>)>) {
    let mut buf = vec![0u8; 65_536 + 64];
    loop {
        if let Err(e) = shared.flush().await {
            debug!("write to the TURN server failed: {e}");
            shared.core().handle_connection_lost(Instant::now());
        }
        let mut closed = false;
        let events: Vec<Event> = {
            let mut core = shared.core();
            std::iter::from_fn(|| core.poll_event()).collect()
        };
        for e in events {
            match e {
                Event::Data { peer, data: d } => {
                    if data.try_send((peer, d)).is_err() {
                        debug!("peer data queue full: dropping a datagram");
                    }
                }
                other => {
                    closed |= matches!(other, Event::Closed { .. });
                    let _ = shared.events.send(other);
                }
            }
        }
        if closed {
            return;
        }
        let deadline = shared.core().poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = read(&mut reader, &mut buf) => match r {
                Ok(frames) => {
                    let now = Instant::now();
                    let mut core = shared.core();
                    for f in frames {
                        core.handle_input(now, &f);
                    }
                }
                Err(e) => {
                    debug!("connection to the TURN server lost: {e}");
                    shared.core().handle_connection_lost(Instant::now());
                }
            },
            () = sleep => shared.core().handle_timeout(Instant::now()),
            () = shared.wake.notified() => {}
        }
    }
}

/// Read what is available: one datagram, or every whole frame of the stream so far.
async fn read(reader: &mut Reader, buf: &mut [u8]) -> io::Result<Vec<Vec<u8>>> {
    match reader {
        Reader::Udp(s) => loop {
            match s.recv(buf).await {
                Ok(n) => return Ok(vec![buf.get(..n).unwrap_or_default().to_vec()]),
                // ICMP port unreachable from an earlier send: keep listening.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!("UDP: {e}");
                }
                Err(e) => return Err(e),
            }
        },
        Reader::Stream(r, decoder) => {
            let n = r.read(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            decoder.push(buf.get(..n).unwrap_or_default());
            let mut frames = vec![];
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => return Ok(frames),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
        }
    }
}

/// TLS client setup with rustls (ring provider).
/// Open TLS over a connected `tcp` stream with `settings` (rustls with the ring provider; a
/// CA file, or the clearly labelled insecure mode). Shared with the ICE driver's `turns:`
/// support. Errors are messages for the user.
pub async fn connect_tls(
    tcp: TcpStream,
    settings: &TlsSettings,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    tls::connect(tcp, settings).await.map_err(|e| match e {
        tls::Error::Setup(m) => m,
        tls::Error::Io(e) => format!("TLS handshake: {e}"),
    })
}

mod tls {
    use std::io::BufReader;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::{TlsRoots, TlsSettings};

    pub(super) enum Error {
        Setup(String),
        Io(std::io::Error),
    }

    pub(super) async fn connect(
        tcp: TcpStream,
        settings: &TlsSettings,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let config = client_config(&settings.roots).map_err(Error::Setup)?;
        let name = ServerName::try_from(settings.server_name.clone())
            .map_err(|e| Error::Setup(format!("server name {:?}: {e}", settings.server_name)))?;
        let connector = TlsConnector::from(Arc::new(config));
        tokio::time::timeout(super::CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(Error::Io)
    }

    fn client_config(roots: &TlsRoots) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        Ok(match roots {
            TlsRoots::CaFile(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                let mut store = RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
                    let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                    store
                        .add(cert)
                        .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                }
                if store.is_empty() {
                    return Err(format!("CA file {}: no certificate in it", path.display()));
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
            TlsRoots::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                    _provider: provider.clone(),
                }))
                .with_no_client_auth(),
        })
    }

    /// INSECURE: accepts any server certificate (signatures are still checked, so the peer
    /// holds the key of the certificate it showed, whoever it is).
    #[derive(Debug)]
    struct AcceptAnyCertificate {
        algorithms: WebPkiSupportedAlgorithms,
        _provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}
