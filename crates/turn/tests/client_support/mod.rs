//! Helpers for testing the TURN client against real servers: a coturn child, an in-process UDP
//! echo peer, a TLS test PKI, and checks that run against any server address and credentials
//! (coturn here; `turnd` once it relays).
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turn::client::driver::{TlsRoots, TlsSettings, TurnClient};
use turn::client::{AddressFamily, Config, Transport};

pub const USER: &str = "natscope";
pub const PASS: &str = "s3cret-pass";
pub const REALM: &str = "natscope.test";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A coturn tool's path; missing is a failure unless NATSCOPE_SKIP_COTURN=1 (then `None`, with
/// a visible note), as in the other coturn interop tests.
pub fn coturn_tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(p) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var("NATSCOPE_SKIP_COTURN").is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: {name} not found; skipping a coturn interop test because \
             NATSCOPE_SKIP_COTURN=1"
        );
        return None;
    }
    panic!(
        "{name} not found in PATH: install coturn to run the interop tests \
         (Debian/Ubuntu: `sudo apt-get install coturn`), or set NATSCOPE_SKIP_COTURN=1 to skip"
    );
}

/// A loopback port free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback");
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("natscope-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test PKI: a CA and a server certificate for 127.0.0.1 and `localhost`, as PEM files.
#[derive(Debug)]
pub struct TestPki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let dir = TempDir::new("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "natscope test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.0.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        TestPki {
            ca: write("ca.pem", ca.pem()),
            cert: write("cert.pem", cert.pem()),
            key: write("key.pem", key.serialize_pem()),
            dir,
        }
    }
}

/// A running coturn `turnserver -n` on 127.0.0.1, killed (by PID) on drop.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    /// UDP and TCP listening address.
    pub addr: SocketAddr,
    /// TLS listening address, when started with a certificate.
    pub tls_addr: Option<SocketAddr>,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Start coturn with long-term credentials `USER:PASS` in `REALM`, loopback peers allowed
    /// and relayed addresses on 127.0.0.1; `pki` adds a TLS listener; `extra` more flags.
    /// `None` when coturn is missing and NATSCOPE_SKIP_COTURN=1.
    pub fn start(pki: Option<&TestPki>, extra: &[&str]) -> Option<Coturn> {
        let bin = coturn_tool("turnserver")?;
        let mut last = String::new();
        for _ in 0..5 {
            match Coturn::try_start(&bin, pki, extra) {
                Ok(c) => return Some(c),
                Err(e) => last = e,
            }
        }
        panic!("coturn did not start: {last}");
    }

    fn try_start(bin: &Path, pki: Option<&TestPki>, extra: &[&str]) -> Result<Coturn, String> {
        let dir = TempDir::new("coturn");
        let log = dir.0.join("turnserver.log");
        let port = free_port();
        let tls_port = pki.map(|_| free_port());
        let mut args: Vec<String> = vec![
            "-n".into(),
            "-L".into(),
            "127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            "--no-dtls".into(),
            "--no-cli".into(),
            "--simple-log".into(),
            "--log-file=stdout".into(),
            "--lt-cred-mech".into(),
            format!("--user={USER}:{PASS}"),
            format!("--realm={REALM}"),
            "--allow-loopback-peers".into(),
        ];
        match (pki, tls_port) {
            (Some(pki), Some(tp)) => {
                args.push(format!("--tls-listening-port={tp}"));
                args.push(format!("--cert={}", pki.cert.display()));
                args.push(format!("--pkey={}", pki.key.display()));
            }
            _ => args.push("--no-tls".into()),
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("stdbuf")
            .args(["-oL", "-eL"])
            .arg(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run turnserver: {e}"))?;
        let mut c = Coturn {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls_addr: tls_port.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))),
            log,
            _dir: dir,
        };
        // Ready when TCP (and TLS) accept and a UDP Binding is answered.
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(format!("turnserver exited ({status}): {}", c.log_text()));
            }
            let tcp_ok = TcpStream::connect(c.addr).is_ok()
                && c.tls_addr.is_none_or(|a| TcpStream::connect(a).is_ok());
            if tcp_ok && udp_binding_answered(c.addr) {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("turnserver not ready: {}", c.log_text()))
    }

    /// coturn's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn udp_binding_answered(server: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut req = [0u8; 20];
    req[1] = 0x01;
    req[4..8].copy_from_slice(&stun::wire::MAGIC_COOKIE.to_be_bytes());
    req[8..20].copy_from_slice(b"natscope-rdy");
    let mut buf = [0u8; 512];
    s.send_to(&req, server).is_ok() && s.recv_from(&mut buf).is_ok()
}

/// An in-process UDP echo peer that records where datagrams came from.
#[derive(Debug)]
pub struct EchoPeer {
    pub addr: SocketAddr,
    pub sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoPeer {
    pub async fn start() -> EchoPeer {
        EchoPeer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    pub async fn start_on(ip: IpAddr) -> EchoPeer {
        let s = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = s.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(vec![]));
        let seen = sources.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                seen.lock().unwrap().push(from);
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        EchoPeer {
            addr,
            sources,
            task,
        }
    }
}

/// How data goes to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// ChannelBind, then ChannelData.
    Channel,
    /// CreatePermission, then Send indications.
    SendIndication,
}

/// What a check measured.
#[derive(Debug)]
pub struct EchoResult {
    pub relayed: SocketAddr,
    pub mapped: Option<SocketAddr>,
    pub local: SocketAddr,
    pub echoed: usize,
}

/// Allocate on `server` over `transport` with `user`/`password`, reach an in-process echo peer
/// through the relay over `path`, and check that `count` payloads of varied sizes (padding
/// cases included) come back intact from the peer, that the peer saw them come from the
/// relayed address, and that deallocation is acknowledged. Panics with a clear message on any
/// failure. Works against any TURN server that relays to 127.0.0.1.
pub async fn check_echo(
    server: SocketAddr,
    transport: Transport,
    tls: Option<TlsSettings>,
    user: &str,
    password: &str,
    path: DataPath,
    count: usize,
) -> EchoResult {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (u, p) = (user, password);
    check_echo_family(server, transport, tls, u, p, path, count, None, v4).await
}

/// [`check_echo`] asking for a relayed address `family` (REQUESTED-ADDRESS-FAMILY), with the
/// echo peer on `peer_ip` (which must be of the relayed address's family).
#[allow(clippy::too_many_arguments)]
pub async fn check_echo_family(
    server: SocketAddr,
    transport: Transport,
    tls: Option<TlsSettings>,
    user: &str,
    password: &str,
    path: DataPath,
    count: usize,
    family: Option<AddressFamily>,
    peer_ip: IpAddr,
) -> EchoResult {
    let peer = EchoPeer::start_on(peer_ip).await;
    let mut config = Config::new(server, transport, user, password);
    config.family = family;
    let turn = TurnClient::connect(config, tls, 42)
        .await
        .unwrap_or_else(|e| panic!("allocation on {server} over {transport:?} failed: {e}"));
    let relayed = turn.relayed_addr();
    assert_ne!(relayed.port(), 0);
    match path {
        DataPath::Channel => {
            let ch = turn.bind_channel(peer.addr).await.expect("ChannelBind");
            assert!((0x4000..=0x4FFF).contains(&ch));
        }
        DataPath::SendIndication => turn
            .create_permission(peer.addr)
            .await
            .expect("CreatePermission"),
    }
    for i in 0..count {
        // Sizes 1, 2, 3... exercise every ChannelData padding case.
        let payload: Vec<u8> = (0..(1 + i * 37 % 1200))
            .map(|j| (i * 7 + j) as u8)
            .collect();
        let mut got = None;
        // UDP may lose a datagram even on loopback under load: up to three tries each.
        for _ in 0..3 {
            turn.send_to(peer.addr, &payload).await.expect("send_to");
            match tokio::time::timeout(Duration::from_secs(2), turn.recv()).await {
                Ok(Some(x)) => {
                    got = Some(x);
                    break;
                }
                Ok(None) => panic!("allocation closed while waiting for echo {i}"),
                Err(_) => continue,
            }
        }
        let (from, data) = got.unwrap_or_else(|| panic!("no echo for datagram {i}"));
        assert_eq!(from, peer.addr, "echo {i} comes from the peer");
        assert_eq!(data, payload, "echo {i} intact");
    }
    let sources = peer.sources.lock().unwrap().clone();
    assert!(sources.len() >= count);
    assert!(
        sources.iter().all(|s| *s == relayed),
        "the peer saw {sources:?}, expected only the relayed address {relayed}"
    );
    let result = EchoResult {
        relayed,
        mapped: turn.mapped_addr(),
        local: turn.local_addr(),
        echoed: count,
    };
    turn.close().await.expect("deallocation acknowledged");
    result
}

/// TLS settings trusting the test PKI's CA, for 127.0.0.1.
pub fn tls_for(pki: &TestPki) -> TlsSettings {
    TlsSettings {
        server_name: "127.0.0.1".into(),
        roots: TlsRoots::CaFile(pki.ca.clone()),
    }
}

/// A running `turnc --echo-peer`, killed on drop.
#[derive(Debug)]
pub struct TurncEchoPeer {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for TurncEchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TurncEchoPeer {
    pub fn start() -> TurncEchoPeer {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_turnc"))
            .args(["--echo-peer", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("turnc echo-peer ready ")
            .unwrap_or_else(|| panic!("no ready line from turnc --echo-peer: {line:?}"))
            .parse()
            .unwrap();
        TurncEchoPeer { child, addr }
    }
}

/// Run `turnc` with `args`; returns its output.
pub fn turnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turnc"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run `turnc --json` against `server` and return (exit status, parsed report).
pub fn turnc_json(server: SocketAddr, args: &[&str]) -> (i32, serde_json::Value) {
    let s = server.to_string();
    let mut all = vec![s.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = turnc(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "turnc --json printed no JSON ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// Check a successful `turnc --json` echo report against what was asked.
pub fn assert_turnc_report(v: &serde_json::Value, transport: &str, mode: &str, count: u64) {
    assert_eq!(v["schema_version"], 1, "{v:#}");
    assert_eq!(v["transport"], transport, "{v:#}");
    assert_eq!(v["mode"], mode, "{v:#}");
    assert_eq!(v["sent"], count, "{v:#}");
    assert_eq!(v["received"], count, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(v["error"].is_null(), "{v:#}");
    let relayed: SocketAddr = v["relayed"].as_str().unwrap().parse().unwrap();
    assert_ne!(relayed.port(), 0);
    let rtt = &v["rtt_ms"];
    let (min, med, p95, max) = (
        rtt["min"].as_f64().unwrap(),
        rtt["median"].as_f64().unwrap(),
        rtt["p95"].as_f64().unwrap(),
        rtt["max"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= med && med <= p95 && p95 <= max, "{rtt}");
    assert!(v["allocation_ms"].as_f64().unwrap() > 0.0);
    if mode == "channel" {
        assert_eq!(v["channel"], 0x4000, "{v:#}");
    } else {
        assert!(v["channel"].is_null());
    }
}
