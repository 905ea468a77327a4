#![allow(clippy::unwrap_used)]
//! turnd's TURN relay on real loopback sockets, driven by a small client written against the
//! `stun` codec: two allocations on one server talking to each other over channels and Send
//! indications (RFC 8656 §11, §12), the peer policy on the wire, Refresh 0 releasing the relay
//! port, TCP allocations dying with their connection, the REST API credentials, quotas, and
//! hostile input (spoofed-source Allocate floods, malformed and oversized datagrams) leaving no
//! state behind.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use stun::credentials::{Challenge, error_code};
use stun::wire::{Class, Message, MessageWriter, attr, message_type};
use turn::binding::ResponderConfig;
use turn::proto;
use turn::relay::Cidr;
use turn::server::{self, RunningServer, ServerConfig, TurnConfig};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn start(
    ports: std::ops::RangeInclusive<u16>,
    tweak: impl FnOnce(&mut TurnConfig),
) -> RunningServer {
    let mut cfg = ServerConfig::new(ResponderConfig::new(SocketAddr::new(LO, 0), None));
    cfg.workers = 2;
    cfg.rate_limit = 0;
    let mut t = TurnConfig::new();
    t.users = vec![
        ("alice".into(), "pw-a".into()),
        ("bob".into(), "pw-b".into()),
    ];
    t.realm = "example.org".into();
    t.relay_ip = Some(LO);
    t.ports = ports;
    tweak(&mut t);
    cfg.turn = Some(t);
    cfg.metrics = Some(SocketAddr::new(LO, 0));
    server::spawn(cfg).unwrap()
}

/// A TURN client over UDP (or a TCP stream).
struct Client {
    sock: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    server: SocketAddr,
    user: String,
    pass: String,
    challenge: Option<Challenge>,
    n: u32,
}

impl Client {
    fn udp(server: SocketAddr, user: &str, pass: &str) -> Client {
        let s = UdpSocket::bind((LO, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Client {
            sock: Some(s),
            tcp: None,
            server,
            user: user.into(),
            pass: pass.into(),
            challenge: None,
            n: 0,
        }
    }

    fn tcp(server: SocketAddr, user: &str, pass: &str) -> Client {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Client {
            sock: None,
            tcp: Some(s),
            server,
            user: user.into(),
            pass: pass.into(),
            challenge: None,
            n: 0,
        }
    }

    fn send_raw(&mut self, b: &[u8]) {
        match (&self.sock, &mut self.tcp) {
            (Some(s), _) => {
                s.send_to(b, self.server).unwrap();
            }
            (_, Some(t)) => t.write_all(b).unwrap(),
            _ => unreachable!(),
        }
    }

    fn recv_raw(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        match (&self.sock, &mut self.tcp) {
            (Some(s), _) => {
                let (n, _) = s.recv_from(&mut buf).ok()?;
                buf.truncate(n);
                Some(buf)
            }
            (_, Some(t)) => {
                let mut have = 0;
                loop {
                    if let Ok(Some(len)) = proto::stream_frame_len(&buf[..have]) {
                        if have >= len {
                            buf.truncate(len);
                            return Some(buf);
                        }
                    }
                    let n = t.read(&mut buf[have..]).ok()?;
                    if n == 0 {
                        return None;
                    }
                    have += n;
                }
            }
            _ => None,
        }
    }

    fn build(
        &mut self,
        method: u16,
        class: Class,
        attrs: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        self.n += 1;
        let mut id = [7u8; 12];
        id[..4].copy_from_slice(&self.n.to_be_bytes());
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, message_type(method, class), &id).unwrap();
        attrs(&mut w);
        if class == Class::Request {
            if let Some(c) = &self.challenge {
                c.credentials(&self.user, &self.pass)
                    .unwrap()
                    .authenticate(&mut w)
                    .unwrap();
            }
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// A request, with the nonce dance (401/438 → retry once).
    fn request(&mut self, method: u16, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        for _ in 0..2 {
            let req = self.build(method, Class::Request, attrs);
            self.send_raw(&req);
            let resp = loop {
                let r = self.recv_raw().expect("no response");
                if Message::parse(&r).is_ok_and(|m| {
                    m.transaction_id() == Message::parse(&req).unwrap().transaction_id()
                }) {
                    break r;
                }
            };
            let m = Message::parse(&resp).unwrap();
            match error_code(&m) {
                Some((401 | 438, _))
                    if self.challenge.is_none() || error_code(&m).unwrap().0 == 438 =>
                {
                    self.challenge = Challenge::from_message(&m);
                }
                _ => return resp,
            }
        }
        panic!("nonce dance did not converge");
    }

    fn allocate(&mut self) -> SocketAddr {
        let r = self.request(proto::ALLOCATE, &|w| {
            w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .unwrap();
        });
        let m = Message::parse(&r).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}", error_code(&m));
        m.address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap()
    }

    fn code(&mut self, method: u16, attrs: &dyn Fn(&mut MessageWriter<'_>)) -> Option<u16> {
        let r = self.request(method, attrs);
        error_code(&Message::parse(&r).unwrap()).map(|c| c.0)
    }

    fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        self.code(proto::CREATE_PERMISSION, &|w| {
            w.address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        })
    }

    fn bind(&mut self, n: u16, peer: SocketAddr) -> Option<u16> {
        self.code(proto::CHANNEL_BIND, &|w| {
            w.attribute(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0])
                .unwrap();
            w.address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        })
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let b = self.build(proto::SEND, Class::Indication, &|w| {
            w.address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            w.attribute(attr::DATA, data).unwrap();
        });
        self.send_raw(&b);
    }

    fn channel_data(&mut self, n: u16, data: &[u8]) {
        let mut b = vec![0u8; data.len() + 8];
        let len = proto::ChannelData::write(&mut b, n, data, self.tcp.is_some()).unwrap();
        self.send_raw(&b[..len]);
    }
}

fn metric(s: &RunningServer, name: &str) -> u64 {
    let mut c = TcpStream::connect(s.metrics_addr().unwrap()).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_allocations_on_one_server_talk_over_channels_and_send_indications() {
    let s = start(22000..=22099, |_| {});
    let mut a = Client::udp(s.primary(), "alice", "pw-a");
    let mut b = Client::udp(s.primary(), "bob", "pw-b");
    let ra = a.allocate();
    let rb = b.allocate();
    assert_eq!((ra.ip(), rb.ip()), (LO, LO));
    assert!((22000..=22099).contains(&ra.port()));
    // Loopback peers are denied by default, but the server's own relay addresses are not.
    assert_eq!(a.permit(SocketAddr::new(LO, 9)), Some(403));
    assert_eq!(a.permit(s.primary()), Some(403), "the server's own port");
    assert_eq!(a.bind(0x4000, rb), None);
    assert_eq!(b.permit(ra), None);
    // a → b over a channel; b gets a Data indication (it has no channel).
    a.channel_data(0x4000, b"over the channel");
    let got = b.recv_raw().unwrap();
    let m = Message::parse(&got).unwrap();
    assert_eq!((m.method(), m.class()), (proto::DATA, Class::Indication));
    assert_eq!(m.address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), ra);
    assert_eq!(m.get(attr::DATA).unwrap().value, b"over the channel");
    // b → a with a Send indication; a gets ChannelData on its channel.
    b.send_indication(ra, b"back by send");
    let got = a.recv_raw().unwrap();
    assert_eq!(&got, b"\x40\x00\x00\x0cback by send");
    // Many messages, none lost on loopback.
    for i in 0..200u32 {
        a.channel_data(0x4000, &i.to_be_bytes());
        let got = b.recv_raw().unwrap();
        let m = Message::parse(&got).unwrap();
        assert_eq!(m.get(attr::DATA).unwrap().value, i.to_be_bytes());
    }
    let m = s.turn_metrics().unwrap().clone();
    eventually("counters", || m.packets_to_peer.load(Relaxed) >= 202);
    assert!(metric(&s, "turnd_relayed_packets_total{direction=\"to_client\"}") >= 202);
    assert_eq!(s.allocations(), 2);
    // Refresh 0 deletes the allocation and frees its port.
    assert_eq!(
        a.code(proto::REFRESH, &|w| w
            .u32_attribute(attr::LIFETIME, 0)
            .unwrap()),
        None
    );
    assert_eq!(s.allocations(), 1);
    assert_eq!(a.code(proto::REFRESH, &|_| {}), Some(437));
    // Binding still answers on the same port.
    let bind = a.build(stun::wire::BINDING, Class::Request, &|_| {});
    a.send_raw(&bind);
    let r = a.recv_raw().unwrap();
    assert_eq!(Message::parse(&r).unwrap().class(), Class::Success);
}

#[test]
fn tcp_allocation_relays_and_dies_with_its_connection() {
    let s = start(22100..=22199, |_| {});
    let peer = UdpSocket::bind((LO, 0)).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let pa = peer.local_addr().unwrap();
    let s2 = start(22200..=22299, |t| {
        t.allow = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()]
    });
    let _ = &s;
    let mut c = Client::tcp(s2.primary(), "alice", "pw-a");
    let relay = c.allocate();
    assert_eq!(c.bind(0x4001, pa), None);
    c.channel_data(0x4001, b"abc");
    let mut buf = [0u8; 100];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"abc"[..], relay));
    peer.send_to(b"hello", relay).unwrap();
    assert_eq!(
        c.recv_raw().unwrap(),
        b"\x40\x01\x00\x05hello\0\0\0",
        "padded on TCP"
    );
    assert_eq!(s2.allocations(), 1);
    drop(c);
    eventually("allocation freed", || s2.allocations() == 0);
    // The relay port is closed: nothing listens there any more.
    let m = s2.turn_metrics().unwrap().clone();
    eventually("deleted counted", || {
        m.allocations_deleted.load(Relaxed) == 1
    });
}

#[test]
fn rest_api_credentials_and_quotas() {
    let s = start(22300..=22399, |t| {
        t.rest_secret = Some("north".into());
        t.user_quota = 1;
        t.total_quota = 2;
    });
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let user = format!("{}:carol", unix + 3600);
    let pass = turn::relay::auth::rest_password(b"north", &user);
    let mut c = Client::udp(s.primary(), &user, &pass);
    c.allocate();
    let expired = format!("{}:carol", unix - 10);
    let pass = turn::relay::auth::rest_password(b"north", &expired);
    let mut e = Client::udp(s.primary(), &expired, &pass);
    let at = |w: &mut MessageWriter<'_>| {
        w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .unwrap()
    };
    assert_eq!(e.code(proto::ALLOCATE, &at), Some(401));
    let mut a1 = Client::udp(s.primary(), "alice", "pw-a");
    a1.allocate();
    let mut a2 = Client::udp(s.primary(), "alice", "pw-a");
    assert_eq!(a2.code(proto::ALLOCATE, &at), Some(486), "per-user quota");
    let mut b = Client::udp(s.primary(), "bob", "pw-b");
    assert_eq!(b.code(proto::ALLOCATE, &at), Some(486), "total quota");
    assert!(
        metric(&s, "turnd_error_responses_total{code=\"486\"}") >= 1 || {
            std::thread::sleep(Duration::from_millis(300));
            metric(&s, "turnd_error_responses_total{code=\"486\"}") >= 1
        }
    );
}

#[test]
fn relay_ports_run_out_with_508() {
    let s = start(22400..=22401, |_| {});
    let mut clients: Vec<Client> = (0..2)
        .map(|_| Client::udp(s.primary(), "alice", "pw-a"))
        .collect();
    for c in &mut clients {
        c.allocate();
    }
    let mut c = Client::udp(s.primary(), "bob", "pw-b");
    let at = |w: &mut MessageWriter<'_>| {
        w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .unwrap()
    };
    assert_eq!(c.code(proto::ALLOCATE, &at), Some(508));
}

#[test]
fn spoofed_source_flood_and_garbage_leave_no_state() {
    let s = start(22500..=22599, |_| {});
    let server = s.primary();
    // 400 sources (8 loopback IPs × 50 ports), each sending Allocates without credentials,
    // with wrong credentials, with a forged nonce, malformed and oversized datagrams.
    let mut socks = vec![];
    for ip in 1..=8u8 {
        for _ in 0..50 {
            socks.push(UdpSocket::bind((Ipv4Addr::new(127, 0, 0, ip), 0)).unwrap());
        }
    }
    let mut c = Client::udp(server, "alice", "wrong");
    let valid_unauth = c.build(proto::ALLOCATE, Class::Request, &|w| {
        w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .unwrap();
    });
    // Learn a real challenge, then sign with a wrong password.
    c.send_raw(&valid_unauth);
    let r = c.recv_raw().unwrap();
    c.challenge = Challenge::from_message(&Message::parse(&r).unwrap());
    let wrong = c.build(proto::ALLOCATE, Class::Request, &|w| {
        w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .unwrap();
    });
    let mut forged_nonce = wrong.clone();
    if let Some(pos) = forged_nonce.windows(9).position(|w| w == b"obMatJos2") {
        forged_nonce[pos + 14] ^= 1;
    }
    let mut oversized = valid_unauth.clone();
    oversized.resize(9000, 0);
    let garbage: Vec<Vec<u8>> = vec![
        valid_unauth.clone(),
        wrong.clone(),
        forged_nonce,
        valid_unauth[..10].to_vec(),
        oversized,
        b"\x40\x00\xff\xff".to_vec(),
        b"\x7f\xff\x00\x10abc".to_vec(),
        vec![0xff; 64],
        vec![],
    ];
    for round in 0..3 {
        for (i, sock) in socks.iter().enumerate() {
            let _ = sock.send_to(&garbage[(i + round) % garbage.len()], server);
        }
    }
    // From its own address the wrong password is a 401 (elsewhere the nonce is not valid: 438).
    c.send_raw(&wrong);
    let r = c.recv_raw().unwrap();
    assert_eq!(error_code(&Message::parse(&r).unwrap()).unwrap().0, 401);
    // The server keeps working, and nothing was stored for anyone.
    let mut ok = Client::udp(server, "bob", "pw-b");
    ok.allocate();
    assert_eq!(s.allocations(), 1, "only the legitimate allocation");
    let m = s.turn_metrics().unwrap().clone();
    eventually("auth failures counted", || {
        m.auth_failures.load(Relaxed) > 0
    });
    assert!(m.errors_of(401) > 0);
    assert!(
        m.errors_of(438) > 0,
        "replayed nonces from other sources are stale"
    );
    assert_eq!(m.allocations_created.load(Relaxed), 1);
}

#[test]
fn metrics_endpoint_speaks_http() {
    let s = start(22600..=22699, |_| {});
    let mut c = TcpStream::connect(s.metrics_addr().unwrap()).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
    assert_eq!(metric(&s, "turnd_allocations_active"), 0);
}

#[test]
fn sigterm_releases_allocations_and_logs_final_stats() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--user",
            "alice:pw-a",
            "--relay-ports",
            "22700-22799",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let mut c = Client::udp(addr, "alice", "pw-a");
    let relay = c.allocate();
    // The relay port is taken while the allocation lives.
    assert!(UdpSocket::bind(relay).is_err());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("TURN final stats"), "{log}");
    assert!(log.contains("allocations_deleted=1"), "{log}");
    assert!(UdpSocket::bind(relay).is_ok(), "relay socket released");
}
