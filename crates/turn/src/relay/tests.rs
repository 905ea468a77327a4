//! Core tests under an injected clock: every method, every error code, expiry.

use std::collections::HashSet;

use stun::credentials::{Challenge, LongTerm, error_code};

use super::*;

const REALM: &str = "example.org";

/// The in-memory pool a driver would back with sockets.
#[derive(Debug)]
struct Pool {
    v4: PortPool,
    v6: Option<PortPool>,
    live: HashSet<SocketAddr>,
}

impl Pool {
    fn new(ports: std::ops::RangeInclusive<u16>, v6: bool) -> Pool {
        Pool {
            v4: PortPool::new(ports.clone(), 1),
            v6: v6.then(|| PortPool::new(ports, 2)),
            live: HashSet::new(),
        }
    }
}

impl RelayPorts for Pool {
    fn supports(&self, f: Family) -> bool {
        f == Family::V4 || self.v6.is_some()
    }
    fn acquire(&mut self, f: Family, even: bool) -> Option<SocketAddr> {
        let a: SocketAddr = match f {
            Family::V4 => SocketAddr::new("203.0.113.1".parse().ok()?, self.v4.take(even)?),
            Family::V6 => {
                SocketAddr::new("2001:db8::1".parse().ok()?, self.v6.as_mut()?.take(even)?)
            }
        };
        assert!(self.live.insert(a), "double acquire");
        Some(a)
    }
    fn release(&mut self, a: SocketAddr) {
        assert!(self.live.remove(&a), "release of a port not held");
        match a {
            SocketAddr::V4(_) => self.v4.put(a.port()),
            SocketAddr::V6(_) => {
                if let Some(p) = self.v6.as_mut() {
                    p.put(a.port());
                }
            }
        }
    }
}

struct Rig {
    t0: Instant,
    server: Server,
    pool: Pool,
    out: Vec<u8>,
}

fn shared_with(t0: Instant, config: RelayConfig, quota: Quota, policy: PeerPolicy) -> Arc<Shared> {
    let auth = Authenticator::new(AuthConfig {
        realm: REALM.into(),
        users: vec![
            ("alice".into(), "pw-a".into()),
            ("bob".into(), "pw-b".into()),
        ],
        rest_secret: Some(b"s3cret".to_vec()),
        nonce_key: [9; 32],
        nonce_lifetime: Duration::from_secs(100_000),
        epoch: t0,
        unix_at_epoch: 1_700_000_000,
    })
    .unwrap();
    Arc::new(Shared {
        config,
        auth,
        policy,
        quota,
    })
}

fn policy() -> PeerPolicy {
    let mut p = PeerPolicy::new();
    p.relay_ips = vec![
        "203.0.113.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    p.relay_ports = Some(50000..=50009);
    p.service = vec!["203.0.113.1:3478".parse().unwrap()];
    p
}

impl Rig {
    fn new() -> Rig {
        Rig::with(
            RelayConfig::default(),
            Quota::new(0, 0),
            Pool::new(50000..=50009, false),
        )
    }

    fn with(config: RelayConfig, quota: Quota, pool: Pool) -> Rig {
        Rig::build(config, quota, pool, policy())
    }

    fn with_policy(policy: PeerPolicy) -> Rig {
        Rig::build(
            RelayConfig::default(),
            Quota::new(0, 0),
            Pool::new(50000..=50009, false),
            policy,
        )
    }

    fn build(config: RelayConfig, quota: Quota, pool: Pool, policy: PeerPolicy) -> Rig {
        let t0 = Instant::now();
        Rig {
            t0,
            server: Server::new(shared_with(t0, config, quota, policy), 0),
            pool,
            out: vec![0u8; 2048],
        }
    }

    /// Send `packet` from `five` at `now`; the response bytes if the output is one.
    fn send(&mut self, now: Instant, five: FiveTuple, packet: &[u8]) -> Output {
        self.server
            .handle_client(now, &mut self.pool, five, packet, &mut self.out)
    }

    fn peer_in(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        p: SocketAddr,
        data: &[u8],
    ) -> Option<ToClient> {
        self.server.handle_peer(now, relay, p, data, &mut self.out)
    }

    fn tick(&mut self, now: Instant) {
        self.server.handle_timeout(now, &mut self.pool);
    }

    fn close(&mut self) {
        self.server.close_all(&mut self.pool);
    }

    fn ask(&mut self, now: Instant, five: FiveTuple, packet: &[u8]) -> Vec<u8> {
        match self.send(now, five, packet) {
            Output::Client { len } => self.out[..len].to_vec(),
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

fn five(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        server: "203.0.113.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A client with its credentials and the server's current challenge.
struct Client {
    five: FiveTuple,
    user: String,
    pass: String,
    challenge: Option<Challenge>,
    seq: u8,
}

type Attrs<'a> = &'a dyn Fn(&mut MessageWriter<'_>);

impl Client {
    fn new(five: FiveTuple, user: &str, pass: &str) -> Client {
        Client {
            five,
            user: user.into(),
            pass: pass.into(),
            challenge: None,
            seq: 0,
        }
    }

    fn id(&mut self) -> TransactionId {
        self.seq = self.seq.wrapping_add(1);
        let mut id = [self.seq; 12];
        id[0] = self.five.client.port() as u8;
        id
    }

    /// A request, signed when a challenge is known.
    fn request(&mut self, method: u16, attrs: Attrs<'_>) -> Vec<u8> {
        let id = self.id();
        self.request_with_id(method, &id, attrs)
    }

    fn request_with_id(&self, method: u16, id: &TransactionId, attrs: Attrs<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut w = MessageWriter::new(&mut buf, message_type(method, Class::Request), id).unwrap();
        attrs(&mut w);
        if let Some(c) = &self.challenge {
            let lt: LongTerm = c.credentials(&self.user, &self.pass).unwrap();
            lt.authenticate(&mut w).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Do the nonce dance: an unauthenticated Allocate, then learn the challenge.
    fn learn(&mut self, rig: &mut Rig, now: Instant) {
        let saved = self.challenge.take();
        let req = self.request(proto::ALLOCATE, &udp);
        let resp = rig.ask(now, self.five, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(error_code(&m).unwrap().0, 401);
        self.challenge = Challenge::from_message(&m);
        assert!(self.challenge.is_some() || saved.is_some());
    }

    fn key(&self) -> Key {
        self.challenge
            .as_ref()
            .unwrap()
            .credentials(&self.user, &self.pass)
            .unwrap()
            .key()
            .unwrap()
    }
}

fn udp(w: &mut MessageWriter<'_>) {
    w.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .unwrap();
}

fn code_of(resp: &[u8]) -> Option<u16> {
    let m = Message::parse(resp).unwrap();
    error_code(&m).map(|(c, _)| c)
}

/// An allocated client: (client, relay address).
fn allocated(rig: &mut Rig, port: u16, user: &str, pass: &str) -> (Client, SocketAddr) {
    let t0 = rig.t0;
    let mut c = Client::new(five(port), user, pass);
    c.learn(rig, t0);
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(t0, c.five, &req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success, "{:?}", error_code(&m));
    assert!(credentials::verify(&m, &c.key()).is_ok(), "response signed");
    let relay = m.address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    (c, relay)
}

fn permit(rig: &mut Rig, c: &mut Client, now: Instant, p: SocketAddr) -> Option<u16> {
    let req = c.request(proto::CREATE_PERMISSION, &|w| {
        w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    });
    code_of(&rig.ask(now, c.five, &req))
}

fn bind(rig: &mut Rig, c: &mut Client, now: Instant, n: u16, p: SocketAddr) -> Option<u16> {
    let req = c.request(proto::CHANNEL_BIND, &|w| {
        w.attribute(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0])
            .unwrap();
        w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    });
    code_of(&rig.ask(now, c.five, &req))
}

fn send_indication(c: &mut Client, p: SocketAddr, data: &[u8]) -> Vec<u8> {
    let id = c.id();
    let mut buf = vec![0u8; 1024];
    let mut w =
        MessageWriter::new(&mut buf, message_type(proto::SEND, Class::Indication), &id).unwrap();
    w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    w.attribute(attr::DATA, data).unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn channel_data(n: u16, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; data.len() + 8];
    let len = ChannelData::write(&mut buf, n, data, false).unwrap();
    buf.truncate(len);
    buf
}

fn relayed<'a>(o: &Output, packet: &'a [u8]) -> Option<(SocketAddr, SocketAddr, &'a [u8])> {
    match o {
        Output::Peer { relay, peer, data } => Some((*relay, *peer, &packet[data.clone()])),
        _ => None,
    }
}

#[test]
fn allocate_nonce_dance_and_no_state_before_authentication() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "alice", "pw-a");
    // §9.2.4: no credentials -> 401 with REALM and NONCE; nothing stored.
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(t0, c.five, &req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(error_code(&m).unwrap().0, 401);
    let ch = Challenge::from_message(&m).unwrap();
    assert_eq!(ch.realm, REALM);
    assert!(ch.nonce.starts_with("obMatJos2AAAA"));
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    assert_eq!(
        rig.server.counters().auth_failures,
        0,
        "a challenge is not a failure"
    );
    c.challenge = Some(ch);
    // DONT-FRAGMENT is not supported (the relay cannot set DF per datagram): 420 (§7.2).
    let req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.attribute(attr::DONT_FRAGMENT, &[]).unwrap();
    });
    let resp = rig.ask(t0, c.five, &req);
    assert_eq!(code_of(&resp), Some(420));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value,
        attr::DONT_FRAGMENT.to_be_bytes()
    );
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(t0, c.five, &req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    let relay = m.address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relay.ip().to_string(), "203.0.113.1");
    assert_eq!(
        m.address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        c.five.client
    );
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, 600u32.to_be_bytes());
    assert!(credentials::verify(&m, &c.key()).is_ok());
    assert_eq!(rig.server.allocations(), 1);
    assert_eq!(rig.server.shared().quota.live(), 1);
    assert_eq!(rig.server.counters().allocations_created, 1);
    assert!(rig.server.has_allocation(&c.five));
    assert_eq!(rig.server.relay_addresses(&c.five), vec![relay]);
}

#[test]
fn allocate_retransmission_gets_the_same_answer_and_a_new_request_437() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let id = c.id();
    let req = c.request_with_id(proto::ALLOCATE, &id, &udp);
    let first = rig.ask(t0, c.five, &req);
    let again = rig.ask(at(t0, 1), c.five, &req);
    let a = Message::parse(&first).unwrap();
    let b = Message::parse(&again).unwrap();
    assert_eq!(b.class(), Class::Success);
    assert_eq!(
        a.address(attr::XOR_RELAYED_ADDRESS),
        b.address(attr::XOR_RELAYED_ADDRESS)
    );
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(at(t0, 1), c.five, &req);
    assert_eq!(code_of(&resp), Some(437));
    let m = Message::parse(&resp).unwrap();
    assert!(credentials::verify(&m, &c.key()).is_ok(), "437 is signed");
    assert_eq!(rig.server.allocations(), 1);
    assert_eq!(rig.pool.live.len(), 1);
}

#[test]
fn allocate_errors_400_440_442_508() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let t = t0;
    type Case = (u16, Box<dyn Fn(&mut MessageWriter<'_>)>);
    let cases: Vec<Case> = vec![
        (400, Box::new(|_w: &mut MessageWriter<'_>| {})),
        (
            442,
            Box::new(|w: &mut MessageWriter<'_>| {
                w.attribute(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
                    .unwrap();
            }),
        ),
        (
            440,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
                    .unwrap();
            }),
        ),
        (
            440,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[9, 0, 0, 0])
                    .unwrap();
            }),
        ),
        (
            508,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::RESERVATION_TOKEN, &[1; 8]).unwrap();
            }),
        ),
        (
            400,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::RESERVATION_TOKEN, &[1; 8]).unwrap();
                w.attribute(attr::EVEN_PORT, &[0]).unwrap();
            }),
        ),
        (
            508,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::EVEN_PORT, &[0x80]).unwrap();
            }),
        ),
        (
            400,
            Box::new(|w: &mut MessageWriter<'_>| {
                udp(w);
                w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])
                    .unwrap();
                w.attribute(proto::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
                    .unwrap();
            }),
        ),
    ];
    for (want, attrs) in &cases {
        let req = c.request(proto::ALLOCATE, &**attrs);
        assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(*want));
    }
    assert_eq!(rig.server.allocations(), 0);
    assert_eq!(
        rig.server.shared().quota.live(),
        0,
        "failed allocations hold no quota"
    );
    // 420 for an unknown comprehension-required attribute.
    let req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.attribute(0x0077, &[0; 4]).unwrap();
    });
    let resp = rig.ask(t, c.five, &req);
    assert_eq!(code_of(&resp), Some(420));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value, [0x00, 0x77]);
    // Unknown method: 400.
    let req = c.request(0x00A, &|_| {});
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(400));
}

#[test]
fn even_port_and_dual_allocation() {
    let mut rig = Rig::with(
        RelayConfig::default(),
        Quota::new(0, 0),
        Pool::new(50000..=50009, true),
    );
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.attribute(attr::EVEN_PORT, &[0]).unwrap();
        w.attribute(proto::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    let resp = rig.ask(t0, c.five, &req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    let relays: Vec<SocketAddr> = m
        .attributes()
        .filter(|a| a.attr_type == attr::XOR_RELAYED_ADDRESS)
        .map(|a| wire::decode_address(a.value, a.attr_type, Some(&m.transaction_id())).unwrap())
        .collect();
    assert_eq!(relays.len(), 2);
    assert!(relays[0].is_ipv4() && relays[0].port() % 2 == 0);
    assert!(relays[1].is_ipv6());
    // Without IPv6 relays, the IPv4 allocation succeeds with ADDRESS-ERROR-CODE 440.
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.attribute(proto::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    let m_bytes = rig.ask(t0, c.five, &req);
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!(m.class(), Class::Success);
    let e = m.get(proto::ATTR_ADDRESS_ERROR_CODE).unwrap().value;
    assert_eq!((e[0], e[2], e[3]), (2, 4, 40));
}

#[test]
fn credentials_401_438_400_and_rest_api() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    // Wrong password: 401, counted.
    let mut c = Client::new(five(4000), "alice", "wrong");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(401));
    // Unknown user.
    let mut c = Client::new(five(4001), "mallory", "x");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(401));
    assert_eq!(rig.server.counters().auth_failures, 2);
    // A nonce issued to another client address: 438 with a fresh nonce.
    let mut c = Client::new(five(4002), "alice", "pw-a");
    c.learn(&mut rig, t);
    c.five = five(4003);
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(t, c.five, &req);
    assert_eq!(code_of(&resp), Some(438));
    c.challenge = Challenge::from_message(&Message::parse(&resp).unwrap());
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(
        code_of(&rig.ask(t, c.five, &req)),
        None,
        "fresh nonce works"
    );
    // Stale: the nonce lifetime (100000 s here) passed.
    let mut c = Client::new(five(4004), "bob", "pw-b");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(at(t0, 100_000), c.five, &req)), Some(438));
    // Integrity without NONCE: 400.
    let mut buf = vec![0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        message_type(proto::ALLOCATE, Class::Request),
        &[5; 12],
    )
    .unwrap();
    udp(&mut w);
    w.attribute(attr::USERNAME, b"alice").unwrap();
    credentials::sign(&mut w, &c.key(), Integrity::Sha1).unwrap();
    let n = w.finish();
    assert_eq!(code_of(&rig.ask(t, five(4005), &buf[..n])), Some(400));
    // Tampered message: 401.
    let mut c = Client::new(five(4006), "alice", "pw-a");
    c.learn(&mut rig, t);
    let mut req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.u32_attribute(attr::LIFETIME, 300).unwrap();
    });
    req[27] ^= 1; // inside LIFETIME
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(401));
    // REST API credentials: valid until their timestamp.
    let user = "1700000100:carol";
    let pw = auth::rest_password(b"s3cret", user);
    let mut c = Client::new(five(4007), user, &pw);
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), None);
    let mut c = Client::new(five(4008), user, &pw);
    c.learn(&mut rig, at(t0, 100));
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(
        code_of(&rig.ask(at(t0, 100), c.five, &req)),
        Some(401),
        "expired"
    );
}

#[test]
fn wrong_credentials_441_and_no_allocation_437() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    let (_alice, _) = allocated(&mut rig, 4000, "alice", "pw-a");
    // Bob on alice's 5-tuple.
    let mut bob = Client::new(five(4000), "bob", "pw-b");
    bob.learn(&mut rig, t);
    let req = bob.request(proto::REFRESH, &|_| {});
    assert_eq!(code_of(&rig.ask(t, bob.five, &req)), Some(441));
    // Refresh, CreatePermission, ChannelBind without an allocation: 437.
    let mut c = Client::new(five(4001), "alice", "pw-a");
    c.learn(&mut rig, t);
    let req = c.request(proto::REFRESH, &|_| {});
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(437));
    assert_eq!(
        permit(&mut rig, &mut c, t, peer("198.51.100.9:1")),
        Some(437)
    );
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x4000, peer("198.51.100.9:1")),
        Some(437)
    );
}

#[test]
fn refresh_lifetimes_and_delete() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    let (mut c, relay) = allocated(&mut rig, 4000, "alice", "pw-a");
    let lifetime = |rig: &mut Rig, c: &mut Client, now, l: Option<u32>| {
        let req = c.request(proto::REFRESH, &|w| {
            if let Some(l) = l {
                w.u32_attribute(attr::LIFETIME, l).unwrap();
            }
        });
        let resp = rig.ask(now, c.five, &req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}", error_code(&m));
        let v = m.get(attr::LIFETIME).unwrap().value;
        u32::from_be_bytes([v[0], v[1], v[2], v[3]])
    };
    assert_eq!(lifetime(&mut rig, &mut c, t, Some(99_999)), 3600, "capped");
    assert_eq!(lifetime(&mut rig, &mut c, t, None), 600);
    assert_eq!(lifetime(&mut rig, &mut c, at(t0, 500), Some(1000)), 1000);
    // Still alive at 1400 s thanks to the refresh at 500 s.
    rig.tick(at(t0, 1400));
    assert_eq!(rig.server.allocations(), 1);
    assert_eq!(lifetime(&mut rig, &mut c, at(t0, 1400), Some(0)), 0);
    assert_eq!(rig.server.allocations(), 0);
    assert!(!rig.pool.live.contains(&relay), "relay port released");
    assert_eq!(rig.server.shared().quota.live(), 0);
    let req = c.request(proto::REFRESH, &|_| {});
    assert_eq!(code_of(&rig.ask(at(t0, 1401), c.five, &req)), Some(437));
}

#[test]
fn quota_486_and_capacity_508() {
    let mut rig = Rig::with(
        RelayConfig::default(),
        Quota::new(2, 3),
        Pool::new(50000..=50009, false),
    );
    let t0 = rig.t0;
    let t = t0;
    allocated(&mut rig, 4000, "alice", "pw-a");
    allocated(&mut rig, 4001, "alice", "pw-a");
    let mut c = Client::new(five(4002), "alice", "pw-a");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(486), "per user");
    allocated(&mut rig, 4003, "bob", "pw-b");
    let mut c = Client::new(five(4004), "bob", "pw-b");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(486), "total");
    // Two relay ports only: the third allocation gets 508.
    let mut rig = Rig::with(
        RelayConfig::default(),
        Quota::new(0, 0),
        Pool::new(50000..=50001, false),
    );
    let _t0 = rig.t0;
    allocated(&mut rig, 4000, "alice", "pw-a");
    allocated(&mut rig, 4001, "alice", "pw-a");
    let mut c = Client::new(five(4002), "alice", "pw-a");
    c.learn(&mut rig, t);
    let req = c.request(proto::ALLOCATE, &udp);
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(508));
    assert_eq!(rig.server.shared().quota.live(), 2);
    assert_eq!(rig.server.counters().errors_of(508), 1);
}

#[test]
fn permissions_send_and_data_indications() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    let (mut c, relay) = allocated(&mut rig, 4000, "alice", "pw-a");
    let p = peer("198.51.100.20:7000");
    // No permission: Send is dropped, peer data too.
    let ind = send_indication(&mut c, p, b"hello");
    assert_eq!(rig.send(t, c.five, &ind), Output::None);
    assert_eq!(rig.peer_in(t, relay, p, b"back"), None);
    // 403 for internal peers and the server's own service port; 400 for no peer.
    assert_eq!(
        permit(&mut rig, &mut c, t, peer("127.0.0.1:7000")),
        Some(403)
    );
    assert_eq!(
        permit(&mut rig, &mut c, t, peer("10.1.2.3:7000")),
        Some(403)
    );
    assert_eq!(
        permit(&mut rig, &mut c, t, peer("203.0.113.1:3478")),
        Some(403)
    );
    assert_eq!(
        permit(&mut rig, &mut c, t, peer("[2001:db8::9]:1")),
        Some(443)
    );
    let req = c.request(proto::CREATE_PERMISSION, &|_| {});
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(400));
    assert_eq!(permit(&mut rig, &mut c, t, p), None);
    // A permission is per IP: any port of the peer.
    let ind = send_indication(&mut c, peer("198.51.100.20:7001"), b"hello");
    let o = rig.send(t, c.five, &ind);
    assert_eq!(
        relayed(&o, &ind),
        Some((relay, peer("198.51.100.20:7001"), &b"hello"[..]))
    );
    let back = rig.peer_in(t, relay, p, b"back").unwrap();
    assert_eq!(back.five, c.five);
    let m = Message::parse(&rig.out[..back.len]).unwrap();
    assert_eq!((m.method(), m.class()), (proto::DATA, Class::Indication));
    assert_eq!(m.address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), p);
    assert_eq!(m.get(attr::DATA).unwrap().value, b"back");
    let k = rig.server.counters();
    assert_eq!(
        (k.packets_to_peer, k.bytes_to_peer, k.packets_to_client),
        (1, 5, 1)
    );
    // Permissions last 300 s, refreshed by CreatePermission.
    assert_eq!(permit(&mut rig, &mut c, at(t0, 200), p), None);
    let ind = send_indication(&mut c, p, b"x");
    assert!(relayed(&rig.send(at(t0, 499), c.five, &ind), &ind).is_some());
    assert_eq!(rig.send(at(t0, 500), c.five, &ind), Output::None);
    rig.tick(at(t0, 500));
    assert_eq!(rig.server.table_sizes().1, 0, "expired permission swept");
    assert_eq!(rig.server.counters().permissions_expired, 1);
}

#[test]
fn peer_on_the_same_server_is_allowed() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    let (mut a, relay_a) = allocated(&mut rig, 4000, "alice", "pw-a");
    let (mut b, relay_b) = allocated(&mut rig, 4001, "bob", "pw-b");
    assert_eq!(permit(&mut rig, &mut a, t, relay_b), None);
    assert_eq!(bind(&mut rig, &mut b, t, 0x4001, relay_a), None);
    let ind = send_indication(&mut a, relay_b, b"ping");
    let o = rig.send(t, a.five, &ind);
    let (from, to, data) = relayed(&o, &ind).unwrap();
    assert_eq!((from, to), (relay_a, relay_b));
    // The driver delivers it to relay_b's socket; it reaches b over its channel.
    let back = rig.peer_in(t, to, from, data).unwrap();
    assert_eq!(back.five, b.five);
    assert_eq!(&rig.out[..back.len], b"\x40\x01\x00\x04ping");
}

#[test]
fn channel_bind_rules_and_channel_data_both_ways() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let t = t0;
    let (mut c, relay) = allocated(&mut rig, 4000, "alice", "pw-a");
    let p = peer("198.51.100.20:7000");
    let q = peer("198.51.100.21:7000");
    // §12: numbers outside 0x4000-0x4FFF, missing attributes: 400.
    assert_eq!(bind(&mut rig, &mut c, t, 0x3FFF, p), Some(400));
    assert_eq!(bind(&mut rig, &mut c, t, 0x8000, p), Some(400));
    let req = c.request(proto::CHANNEL_BIND, &|w| {
        w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    });
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), Some(400));
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x4000, peer("127.0.0.1:1")),
        Some(403)
    );
    // ChannelData before the bind is dropped.
    let cd = channel_data(0x4000, b"data");
    assert_eq!(rig.send(t, c.five, &cd), Output::None);
    assert_eq!(bind(&mut rig, &mut c, t, 0x4000, p), None);
    assert_eq!(bind(&mut rig, &mut c, t, 0x4000, p), None, "refresh");
    let req = c.request(proto::REFRESH, &|w| {
        w.u32_attribute(attr::LIFETIME, 3600).unwrap()
    });
    assert_eq!(code_of(&rig.ask(t, c.five, &req)), None);
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x4000, q),
        Some(400),
        "number taken"
    );
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x4001, p),
        Some(400),
        "peer taken"
    );
    assert_eq!(rig.server.counters().channels_bound, 1);
    let o = rig.send(t, c.five, &cd);
    assert_eq!(relayed(&o, &cd), Some((relay, p, &b"data"[..])));
    // The bind installed a permission: peer data comes back as ChannelData (UDP: unpadded).
    let back = rig.peer_in(t, relay, p, b"abcde").unwrap();
    assert_eq!(&rig.out[..back.len], b"\x40\x00\x00\x05abcde");
    // Padding after the data in a UDP datagram is ignored (§12.5); a short one is dropped.
    let mut padded = cd.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    assert!(relayed(&rig.send(t, c.five, &padded), &padded).is_some());
    assert_eq!(rig.send(t, c.five, b"\x40\x00\x00\x09ab"), Output::None);
    // Expiry: the permission (300 s) goes first unless refreshed; the channel lasts 600 s.
    assert_eq!(permit(&mut rig, &mut c, at(t0, 290), p), None);
    assert!(relayed(&rig.send(at(t0, 589), c.five, &cd), &cd).is_some());
    assert_eq!(
        rig.send(at(t0, 590), c.five, &cd),
        Output::None,
        "permission expired"
    );
    assert_eq!(permit(&mut rig, &mut c, at(t0, 595), p), None);
    assert!(relayed(&rig.send(at(t0, 599), c.five, &cd), &cd).is_some());
    assert_eq!(
        rig.send(at(t0, 600), c.five, &cd),
        Output::None,
        "channel expired"
    );
    rig.tick(at(t0, 600));
    assert_eq!(rig.server.counters().channels_expired, 1);
    // Cool-down (5 min): neither the number nor the peer may be bound to another.
    assert_eq!(bind(&mut rig, &mut c, at(t0, 650), 0x4000, q), Some(400));
    assert_eq!(bind(&mut rig, &mut c, at(t0, 650), 0x4002, p), Some(400));
    rig.tick(at(t0, 901));
    assert_eq!(rig.server.table_sizes().2, 0, "cooled down");
    assert_eq!(bind(&mut rig, &mut c, at(t0, 901), 0x4000, q), None);
}

#[test]
fn channel_data_over_tcp_is_padded() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(
        FiveTuple {
            transport: Transport::Tcp,
            ..five(4000)
        },
        "alice",
        "pw-a",
    );
    c.learn(&mut rig, t0);
    let req = c.request(proto::ALLOCATE, &udp);
    let resp = rig.ask(t0, c.five, &req);
    let relay = Message::parse(&resp)
        .unwrap()
        .address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let p = peer("198.51.100.20:7000");
    assert_eq!(bind(&mut rig, &mut c, t0, 0x4abc, p), None);
    let back = rig.peer_in(t0, relay, p, b"abcde").unwrap();
    assert_eq!(&rig.out[..back.len], b"\x4a\xbc\x00\x05abcde\0\0\0");
}

#[test]
fn allocations_expire_and_release_their_ports() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let (mut c, relay) = allocated(&mut rig, 4000, "alice", "pw-a");
    let p = peer("198.51.100.20:7000");
    assert_eq!(permit(&mut rig, &mut c, t0, p), None);
    assert!(rig.server.poll_timeout().is_some());
    rig.tick(at(t0, 599));
    assert_eq!(rig.server.allocations(), 1);
    assert_eq!(rig.peer_in(at(t0, 600), relay, p, b"x"), None);
    rig.tick(at(t0, 600));
    assert_eq!(rig.server.allocations(), 0);
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    assert!(rig.pool.live.is_empty());
    assert_eq!(rig.server.shared().quota.live(), 0);
    assert_eq!(rig.server.counters().allocations_expired, 1);
    assert_eq!(rig.server.poll_timeout(), None);
    // An expired allocation is gone for requests even before the sweep.
    let (mut c, _) = allocated(&mut rig, 4001, "alice", "pw-a");
    let req = c.request(proto::REFRESH, &|_| {});
    assert_eq!(code_of(&rig.ask(at(t0, 601), c.five, &req)), Some(437));
    assert!(rig.pool.live.is_empty());
}

#[test]
fn close_all_frees_everything() {
    let mut rig = Rig::new();
    let _t0 = rig.t0;
    allocated(&mut rig, 4000, "alice", "pw-a");
    allocated(&mut rig, 4001, "bob", "pw-b");
    rig.close();
    assert_eq!(rig.server.allocations(), 0);
    assert!(rig.pool.live.is_empty());
    assert_eq!(rig.server.counters().allocations_deleted, 2);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let cfg = RelayConfig {
        bandwidth: Some(1000),
        ..RelayConfig::default()
    };
    let mut rig = Rig::with(cfg, Quota::new(0, 0), Pool::new(50000..=50009, false));
    let t0 = rig.t0;
    let (mut c, _) = allocated(&mut rig, 4000, "alice", "pw-a");
    let p = peer("198.51.100.20:7000");
    assert_eq!(bind(&mut rig, &mut c, t0, 0x4000, p), None);
    let cd = channel_data(0x4000, &[0u8; 400]);
    let sent = (0..5)
        .filter(|_| relayed(&rig.send(t0, c.five, &cd), &cd).is_some())
        .count();
    assert_eq!(sent, 2, "1000 bytes of burst");
    assert_eq!(
        rig.server.counters().dropped[DropReason::Bandwidth as usize],
        3
    );
    let later = t0 + Duration::from_millis(500);
    assert!(
        relayed(&rig.send(later, c.five, &cd), &cd).is_some(),
        "refilled"
    );
}

#[test]
fn garbage_never_panics_and_stores_nothing() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let valid = c.request(proto::ALLOCATE, &udp);
    for i in 0..20_000u32 {
        let mut p = valid.clone();
        let r = next();
        match i % 4 {
            0 => p.truncate((r as usize) % p.len()),
            1 => {
                let at = (r as usize) % p.len();
                p[at] ^= (r >> 32) as u8 | 1;
            }
            2 => p = (0..(r % 80) as usize).map(|_| next() as u8).collect(),
            _ => {
                p = vec![0x40, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8];
                p.extend((0..(r % 16)).map(|x| x as u8));
            }
        }
        let src = five(10_000 + (i % 50_000) as u16);
        let _ = rig.send(t0, src, &p);
        let _ = rig.peer_in(t0, peer("203.0.113.1:50000"), src.client, &p);
    }
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    assert_eq!(rig.server.shared().quota.live(), 0);
}

/// Random attributes in correctly signed requests from the 5-tuple the nonce was issued to:
/// the authenticated paths (Allocate, Refresh, CreatePermission, ChannelBind, Send, ChannelData)
/// see hostile values. Nothing panics, tables stay within the caps, everything is freed.
#[test]
fn signed_garbage_reaches_the_authenticated_paths() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut seed = 0x9E37_79B9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let types = [
        attr::LIFETIME,
        attr::XOR_PEER_ADDRESS,
        attr::CHANNEL_NUMBER,
        attr::REQUESTED_TRANSPORT,
        attr::REQUESTED_ADDRESS_FAMILY,
        proto::ATTR_ADDITIONAL_ADDRESS_FAMILY,
        attr::EVEN_PORT,
        attr::RESERVATION_TOKEN,
        attr::DATA,
        attr::DONT_FRAGMENT,
        0x0077,
    ];
    let methods = [
        proto::ALLOCATE,
        proto::REFRESH,
        proto::CREATE_PERMISSION,
        proto::CHANNEL_BIND,
        0x00F,
    ];
    let (mut successes, mut codes) = (0, HashSet::new());
    for i in 0..4000u64 {
        let now = t0 + Duration::from_millis(i * 250);
        let r = next();
        let method = methods[(r % methods.len() as u64) as usize];
        let mut attrs: Vec<(u16, Vec<u8>)> = vec![];
        for k in 0..(r >> 8) % 4 {
            let t = types[((next() >> k) % types.len() as u64) as usize];
            let len = [0usize, 1, 4, 8, 20][(next() % 5) as usize];
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                // Often well-formed: a plausible value of the right shape.
                match t {
                    attr::REQUESTED_TRANSPORT => v = vec![17, 0, 0, 0],
                    attr::CHANNEL_NUMBER => v = vec![0x40, next() as u8 % 4, 0, 0],
                    attr::LIFETIME => v = ((next() % 4) as u32 * 300).to_be_bytes().to_vec(),
                    _ => {}
                }
            }
            attrs.push((t, v));
        }
        if method == proto::ALLOCATE && next() % 2 == 0 {
            attrs.push((attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]));
        }
        let addr = SocketAddr::new(format!("198.51.100.{}", next() % 4).parse().unwrap(), 7000);
        let req = c.request(method, &|w| {
            if method == proto::CREATE_PERMISSION || method == proto::CHANNEL_BIND {
                w.address(attr::XOR_PEER_ADDRESS, addr).unwrap();
            }
            for (t, v) in &attrs {
                w.attribute(*t, v).unwrap();
            }
        });
        let resp = rig.ask(now, c.five, &req);
        match code_of(&resp) {
            None => successes += 1,
            Some(code) => {
                codes.insert(code);
            }
        }
        // Relayed traffic with random shapes on the same 5-tuple.
        let data = channel_data_raw(0x4000 + (next() % 4) as u16, &[1, 2, 3]);
        let _ = rig.send(now, c.five, &data);
        let ind = send_indication(&mut c, addr, b"x");
        let _ = rig.send(now, c.five, &ind);
        for relay in rig.server.relay_addresses(&c.five) {
            let _ = rig.peer_in(now, relay, addr, b"y");
        }
        rig.tick(now);
        let (allocs, perms, chans) = rig.server.table_sizes();
        assert!(allocs <= 2 && perms <= 64 && chans <= 64);
    }
    // The authenticated paths were reached: successes, and errors only they produce.
    assert!(successes > 100, "{successes} successes");
    for code in [437, 440, 508, 420] {
        assert!(codes.contains(&code), "no {code} among {codes:?}");
    }
    assert!(
        !codes.contains(&401),
        "signed requests authenticate: {codes:?}"
    );
    rig.close();
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    assert_eq!(rig.server.shared().quota.live(), 0);
    assert!(rig.pool.live.is_empty());
}

fn at(t0: Instant, secs: u64) -> Instant {
    t0 + Duration::from_secs(secs)
}

#[test]
fn rfc5766_channel_numbers_are_a_switch() {
    let p = peer("198.51.100.20:7000");
    let mut rig = Rig::new();
    let (mut c, relay) = allocated(&mut rig, 4000, "alice", "pw-a");
    let t = rig.t0;
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x7FFF, p),
        None,
        "RFC 5766 range by default"
    );
    let cd = channel_data_raw(0x7FFF, b"hi");
    assert_eq!(
        relayed(&rig.send(t, c.five, &cd), &cd),
        Some((relay, p, &b"hi"[..]))
    );
    let back = rig.peer_in(t, relay, p, b"yo").unwrap();
    assert_eq!(&rig.out[..back.len], b"\x7f\xff\x00\x02yo");
    let cfg = RelayConfig {
        rfc5766_channels: false,
        ..RelayConfig::default()
    };
    let mut rig = Rig::with(cfg, Quota::new(0, 0), Pool::new(50000..=50009, false));
    let (mut c, _) = allocated(&mut rig, 4000, "alice", "pw-a");
    let t = rig.t0;
    assert_eq!(
        bind(&mut rig, &mut c, t, 0x5000, p),
        Some(400),
        "RFC 8656 strict"
    );
    assert_eq!(
        rig.send(t, c.five, &channel_data_raw(0x5000, b"hi")),
        Output::None
    );
}

fn channel_data_raw(n: u16, data: &[u8]) -> Vec<u8> {
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Append an attribute to a signed message, fixing the length: what an on-path attacker who
/// captured a request can do without the key.
fn append_raw(mut msg: Vec<u8>, t: u16, v: &[u8]) -> Vec<u8> {
    msg.extend_from_slice(&t.to_be_bytes());
    msg.extend_from_slice(&(v.len() as u16).to_be_bytes());
    msg.extend_from_slice(v);
    while msg.len() % 4 != 0 {
        msg.push(0);
    }
    let l = (msg.len() - 20) as u16;
    msg[2..4].copy_from_slice(&l.to_be_bytes());
    msg
}

fn xor_peer_value(p: SocketAddr, id: &TransactionId) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut w =
        MessageWriter::new(&mut buf, message_type(proto::SEND, Class::Indication), id).unwrap();
    w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    let n = w.finish();
    buf[24..n].to_vec()
}

#[test]
fn attributes_appended_after_integrity_are_ignored_rfc8489_14_5() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let (mut c, _) = allocated(&mut rig, 4000, "alice", "pw-a");
    let p = peer("198.51.100.20:7000");
    let evil = peer("192.0.2.99:53");
    // A captured CreatePermission for p with a second XOR-PEER-ADDRESS appended.
    let req = c.request(proto::CREATE_PERMISSION, &|w| {
        w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    });
    let id: TransactionId = req[8..20].try_into().unwrap();
    let tampered = append_raw(req, attr::XOR_PEER_ADDRESS, &xor_peer_value(evil, &id));
    assert_eq!(code_of(&rig.ask(t0, c.five, &tampered)), None);
    let s = send_indication(&mut c, evil, b"x");
    assert_eq!(
        rig.send(t0, c.five, &s),
        Output::None,
        "no permission for evil"
    );
    let s = send_indication(&mut c, p, b"x");
    assert!(relayed(&rig.send(t0, c.five, &s), &s).is_some());
    // A captured Refresh with LIFETIME 0 appended is a plain refresh, not a delete.
    let req = c.request(proto::REFRESH, &|_| {});
    let tampered = append_raw(req, attr::LIFETIME, &0u32.to_be_bytes());
    let resp = rig.ask(t0, c.five, &tampered);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, 600u32.to_be_bytes());
    assert_eq!(rig.server.allocations(), 1);
    // An unknown comprehension-required attribute after the signature is ignored too.
    let req = c.request(proto::REFRESH, &|_| {});
    let tampered = append_raw(req, 0x0077, &[0; 4]);
    assert_eq!(code_of(&rig.ask(t0, c.five, &tampered)), None);
}

#[test]
fn only_live_relay_addresses_are_exempt_and_deny_list_wins() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let (mut a, relay_a) = allocated(&mut rig, 4000, "alice", "pw-a");
    let (_b, relay_b) = allocated(&mut rig, 4001, "bob", "pw-b");
    assert_eq!(permit(&mut rig, &mut a, t0, relay_b), None, "a live relay");
    // Another port of the relay range with no allocation behind it: the relay IP is the
    // server's own, so no (it could be any service of the host).
    let idle = (50000..=50009)
        .map(|p| SocketAddr::new(relay_a.ip(), p))
        .find(|r| *r != relay_a && *r != relay_b)
        .unwrap();
    assert_eq!(permit(&mut rig, &mut a, t0, idle), Some(403));
    assert_eq!(
        permit(&mut rig, &mut a, t0, peer("203.0.113.1:53")),
        Some(403),
        "own IP, other port"
    );
    assert_eq!(
        permit(&mut rig, &mut a, t0, peer("203.0.113.1:3478")),
        Some(403),
        "service port"
    );
    // Once bob's allocation is gone, its relay address is just a port of the server again.
    let mut bob = Client::new(five(4001), "bob", "pw-b");
    bob.learn(&mut rig, t0);
    let req = bob.request(proto::REFRESH, &|w| {
        w.u32_attribute(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(code_of(&rig.ask(t0, bob.five, &req)), None);
    assert_eq!(permit(&mut rig, &mut a, t0, relay_b), Some(403));
    assert!(!rig.server.shared().policy.live.contains(relay_b));
    assert!(rig.server.shared().policy.live.contains(relay_a));
    // The deny list beats the exemption.
    let mut p = policy();
    p.deny.push("203.0.113.0/24".parse().unwrap());
    let mut rig = Rig::with_policy(p);
    let t0 = rig.t0;
    let (mut a, _) = allocated(&mut rig, 4000, "alice", "pw-a");
    let (_b, relay_b) = allocated(&mut rig, 4001, "bob", "pw-b");
    assert_eq!(permit(&mut rig, &mut a, t0, relay_b), Some(403));
}

#[test]
fn rest_credentials_expire_for_existing_allocations_too() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    // Valid for 100 s from t0 (unix_at_epoch is 1_700_000_000).
    let user = "1700000100:carol";
    let pw = auth::rest_password(b"s3cret", user);
    let (mut c, _) = allocated(&mut rig, 4000, user, &pw);
    // Granted lifetimes end with the credential: 100 s, not 600 s or 3600 s.
    let refresh = |rig: &mut Rig, c: &mut Client, now: Instant| {
        let req = c.request(proto::REFRESH, &|w| {
            w.u32_attribute(attr::LIFETIME, 3600).unwrap()
        });
        rig.ask(now, c.five, &req)
    };
    let resp = refresh(&mut rig, &mut c, at(t0, 40));
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, 60u32.to_be_bytes());
    let p = peer("198.51.100.20:7000");
    assert_eq!(permit(&mut rig, &mut c, at(t0, 99), p), None);
    // Expired: 401 on every request, even with the key the allocation holds.
    assert_eq!(code_of(&refresh(&mut rig, &mut c, at(t0, 100))), Some(401));
    assert_eq!(permit(&mut rig, &mut c, at(t0, 150), p), Some(401));
    assert_eq!(bind(&mut rig, &mut c, at(t0, 150), 0x4000, p), Some(401));
    // And the allocation dies with it.
    rig.tick(at(t0, 101));
    assert_eq!(rig.server.allocations(), 0);
    assert_eq!(rig.server.shared().quota.live(), 0);
    // A first Allocate is capped too.
    let user = "1700000030:dave";
    let pw = auth::rest_password(b"s3cret", user);
    let mut c = Client::new(five(4001), user, &pw);
    c.learn(&mut rig, t0);
    let req = c.request(proto::ALLOCATE, &udp);
    let m_bytes = rig.ask(t0, c.five, &req);
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, 30u32.to_be_bytes());
}

#[test]
fn per_user_quota_counts_rest_credentials_of_one_user_together() {
    let mut rig = Rig::with(
        RelayConfig::default(),
        Quota::new(1, 0),
        Pool::new(50000..=50009, false),
    );
    let t0 = rig.t0;
    let pw = |u: &str| auth::rest_password(b"s3cret", u);
    allocated(&mut rig, 4000, "1700000100:carol", &pw("1700000100:carol"));
    for (i, u) in ["1700000101:carol", "1700000102:carol"].iter().enumerate() {
        let mut c = Client::new(five(4001 + i as u16), u, &pw(u));
        c.learn(&mut rig, t0);
        let req = c.request(proto::ALLOCATE, &udp);
        assert_eq!(code_of(&rig.ask(t0, c.five, &req)), Some(486), "{u}");
    }
    allocated(&mut rig, 4010, "1700000100:dave", &pw("1700000100:dave"));
    assert_eq!(rig.server.allocations(), 2);
    rig.close();
    assert_eq!(rig.server.shared().quota.live(), 0);
    assert_eq!(rig.server.shared().quota.users(), 0);
}

#[test]
fn oversized_username_realm_nonce_get_400_before_any_cryptography() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let mut c = Client::new(five(4000), "x", "y");
    c.learn(&mut rig, t0);
    let nonce = c.challenge.as_ref().unwrap().nonce.clone();
    let req = |user: &[u8], realm: &[u8], nonce: &[u8]| {
        let mut buf = vec![0u8; 8192];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(proto::ALLOCATE, Class::Request),
            &[3; 12],
        )
        .unwrap();
        udp(&mut w);
        w.attribute(attr::USERNAME, user).unwrap();
        w.attribute(attr::REALM, realm).unwrap();
        w.attribute(attr::NONCE, nonce).unwrap();
        w.attribute(attr::MESSAGE_INTEGRITY, &[0u8; 20]).unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    };
    let long_user = format!("9999999999:{}", "a".repeat(502));
    assert_eq!(long_user.len(), 513);
    let ok_user = &long_user[..512];
    let realm = REALM.as_bytes();
    let n = nonce.as_bytes();
    type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], u16);
    let cases: [Case<'_>; 6] = [
        (long_user.as_bytes(), realm, n, 400),
        (ok_user.as_bytes(), realm, n, 401),
        (b"alice", &[b'r'; 763], n, 400),
        (b"alice", &[b'r'; 762], n, 401),
        (b"alice", realm, &[b'n'; 763], 400),
        (b"alice", realm, &[b'n'; 762], 438),
    ];
    for (i, (u, r, nn, want)) in cases.iter().enumerate() {
        let resp = rig.ask(t0, c.five, &req(u, r, nn));
        assert_eq!(code_of(&resp), Some(*want), "case {i}");
    }
    // The 400s are not authentication failures: nothing was hashed or looked up for them.
    assert_eq!(rig.server.counters().auth_failures, 2);
    assert_eq!(rig.server.table_sizes(), (0, 0, 0));
}

/// Minimal requests that reach every unauthenticated error path: (what, bytes, code).
fn minimal_error_requests() -> Vec<(&'static str, Vec<u8>, u16)> {
    let bare = |method: u16, attrs: &[(u16, &[u8])], fingerprint: bool| {
        let mut buf = vec![0u8; 2048];
        let mut w =
            MessageWriter::new(&mut buf, message_type(method, Class::Request), &[7; 12]).unwrap();
        for (t, v) in attrs {
            w.attribute(*t, v).unwrap();
        }
        if fingerprint {
            w.fingerprint().unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    };
    let mi: (u16, &[u8]) = (attr::MESSAGE_INTEGRITY, &[0; 20]);
    let long_user = [b'u'; 513];
    vec![
        ("bare Allocate", bare(proto::ALLOCATE, &[], false), 401),
        (
            "bare Allocate + FINGERPRINT",
            bare(proto::ALLOCATE, &[], true),
            401,
        ),
        ("bare Refresh", bare(proto::REFRESH, &[], false), 401),
        (
            "bare CreatePermission",
            bare(proto::CREATE_PERMISSION, &[], false),
            401,
        ),
        (
            "bare ChannelBind",
            bare(proto::CHANNEL_BIND, &[], false),
            401,
        ),
        ("unknown method", bare(0x00F, &[], false), 400),
        (
            "unknown attribute",
            bare(proto::ALLOCATE, &[(0x0077, &[])], false),
            420,
        ),
        (
            "eight unknown attributes",
            bare(
                proto::ALLOCATE,
                &[
                    (0x0070, &[]),
                    (0x0071, &[]),
                    (0x0072, &[]),
                    (0x0073, &[]),
                    (0x0074, &[]),
                    (0x0075, &[]),
                    (0x0076, &[]),
                    (0x0077, &[]),
                ],
                false,
            ),
            420,
        ),
        ("integrity only", bare(proto::ALLOCATE, &[mi], false), 400),
        (
            "forged nonce",
            bare(
                proto::ALLOCATE,
                &[
                    (attr::USERNAME, &[]),
                    (attr::REALM, &[]),
                    (attr::NONCE, &[]),
                    mi,
                ],
                false,
            ),
            438,
        ),
        (
            "long username",
            bare(proto::ALLOCATE, &[(attr::USERNAME, &long_user), mi], false),
            400,
        ),
    ]
}

fn rig_with_realm(realm: &str) -> Rig {
    let t0 = Instant::now();
    let auth = Authenticator::new(AuthConfig {
        realm: realm.into(),
        users: vec![("alice".into(), "pw-a".into())],
        rest_secret: None,
        nonce_key: [9; 32],
        nonce_lifetime: Duration::from_secs(600),
        epoch: t0,
        unix_at_epoch: 1_700_000_000,
    })
    .unwrap();
    let shared = Arc::new(Shared {
        config: RelayConfig::default(),
        auth,
        policy: policy(),
        quota: Quota::new(0, 0),
    });
    Rig {
        t0,
        server: Server::new(shared, 0),
        pool: Pool::new(50000..=50009, false),
        out: vec![0u8; 2048],
    }
}

#[test]
fn unauthenticated_answers_keep_the_3x_amplification_bound_on_the_wire() {
    let clients = [
        SocketAddr::new("198.51.100.7".parse().unwrap(), 4000),
        SocketAddr::new("2001:db8:1::7".parse().unwrap(), 4000),
    ];
    let long_realm = "r".repeat(200);
    for realm in [REALM, "a-realm-of-28-characters-xyz", long_realm.as_str()] {
        let mut rig = rig_with_realm(realm);
        let t0 = rig.t0;
        for client in clients {
            let five = FiveTuple {
                client,
                server: "203.0.113.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            };
            let overhead = if client.is_ipv4() { 28 } else { 48 };
            for (what, req, code) in minimal_error_requests() {
                let answer = match rig.send(t0, five, &req) {
                    Output::Client { len } => Some(rig.out[..len].to_vec()),
                    Output::None => None,
                    other => panic!("{what}: {other:?}"),
                };
                if let Some(a) = &answer {
                    assert!(
                        a.len() + overhead <= 3 * (req.len() + overhead),
                        "{what} from {client} with realm of {} bytes: {} -> {} bytes",
                        realm.len(),
                        req.len(),
                        a.len()
                    );
                    assert_eq!(code_of(a), Some(code), "{what}");
                }
                // With a realm of ordinary length every path answers (a client can retry);
                // only an oversized realm makes the bare requests' challenges go unanswered.
                if realm.len() <= 28 {
                    assert!(answer.is_some(), "{what} from {client}: no answer");
                }
            }
        }
        assert_eq!(rig.server.table_sizes(), (0, 0, 0));
    }
    // Over TCP the bound does not apply (the handshake proved the address): full answers.
    let mut rig = rig_with_realm(&long_realm);
    let five = FiveTuple {
        transport: Transport::Tcp,
        ..five(4000)
    };
    let (_, req, _) = &minimal_error_requests()[0];
    let t0 = rig.t0;
    let a = rig.ask(t0, five, req);
    assert!(Challenge::from_message(&Message::parse(&a).unwrap()).is_some());
}

#[test]
fn rfc8656_lifetime_floor_refresh_family_and_dont_fragment_on_send() {
    let mut rig = Rig::new();
    let t0 = rig.t0;
    let lifetime_of = |resp: &[u8]| {
        let m = Message::parse(resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}", error_code(&m));
        let v = m.get(attr::LIFETIME).unwrap().value;
        u32::from_be_bytes([v[0], v[1], v[2], v[3]])
    };
    // §7.2: a requested lifetime below the default gets the default.
    let mut c = Client::new(five(4000), "alice", "pw-a");
    c.learn(&mut rig, t0);
    let req = c.request(proto::ALLOCATE, &|w| {
        udp(w);
        w.u32_attribute(attr::LIFETIME, 1).unwrap();
    });
    assert_eq!(lifetime_of(&rig.ask(t0, c.five, &req)), 600);
    // §8.2: the same for Refresh; above the default it is honoured up to the maximum.
    for (asked, granted) in [(1, 600), (599, 600), (601, 601), (99_999, 3600)] {
        let req = c.request(proto::REFRESH, &|w| {
            w.u32_attribute(attr::LIFETIME, asked).unwrap()
        });
        assert_eq!(lifetime_of(&rig.ask(t0, c.five, &req)), granted, "{asked}");
    }
    rig.tick(at(t0, 599));
    assert_eq!(rig.server.allocations(), 1, "not expired after 1 s");
    // §8.2: Refresh asking for a family the allocation has no relay of: 443, nothing deleted.
    let req = c.request(proto::REFRESH, &|w| {
        w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
        w.u32_attribute(attr::LIFETIME, 0).unwrap();
    });
    assert_eq!(code_of(&rig.ask(t0, c.five, &req)), Some(443));
    assert_eq!(rig.server.allocations(), 1);
    let req = c.request(proto::REFRESH, &|w| {
        w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(code_of(&rig.ask(t0, c.five, &req)), None, "matching family");
    let req = c.request(proto::REFRESH, &|w| {
        w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[7, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(code_of(&rig.ask(t0, c.five, &req)), Some(400));
    // A Send indication asking for DF is discarded, not relayed without it.
    let p = peer("198.51.100.20:7000");
    assert_eq!(permit(&mut rig, &mut c, t0, p), None);
    let id = c.id();
    let mut buf = vec![0u8; 256];
    let mut w =
        MessageWriter::new(&mut buf, message_type(proto::SEND, Class::Indication), &id).unwrap();
    w.address(attr::XOR_PEER_ADDRESS, p).unwrap();
    w.attribute(attr::DATA, b"x").unwrap();
    w.attribute(attr::DONT_FRAGMENT, &[]).unwrap();
    let n = w.finish();
    assert_eq!(rig.send(t0, c.five, &buf[..n]), Output::None);
    let ok = send_indication(&mut c, p, b"x");
    assert!(relayed(&rig.send(t0, c.five, &ok), &ok).is_some());
}
