//! The core against a scripted server under a virtual clock. Responses are built with
//! `MessageWriter` and signed with `credentials::sign`, as a real server would.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun::credentials::{self, Integrity, Key, PasswordAlgorithm};
use stun::wire::{Class, Message, MessageWriter, attr, message_type};

use super::*;
use crate::proto;

const USER: &str = "user";
const PASS: &str = "secret";
const REALM: &str = "example.org";

fn server_addr() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}
fn relayed() -> SocketAddr {
    "192.0.2.1:50000".parse().unwrap()
}
fn mapped() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}
fn peer() -> SocketAddr {
    "203.0.113.5:7000".parse().unwrap()
}

/// A scripted TURN server: checks what it receives and builds signed answers.
struct Server {
    nonce: String,
    sha256: bool,
    key: Key,
}

impl Server {
    fn new() -> Server {
        Server {
            nonce: "nonce-1".into(),
            sha256: false,
            key: Key::long_term(USER, REALM, PASS, PasswordAlgorithm::Md5).unwrap(),
        }
    }

    fn with_sha256() -> Server {
        Server {
            sha256: true,
            key: Key::long_term(USER, REALM, PASS, PasswordAlgorithm::Sha256).unwrap(),
            ..Server::new()
        }
    }

    /// A 401 or 438 challenge (unsigned, as RFC 8489 §9.2.4 has it).
    fn challenge(&self, req: &[u8], code: u16) -> Vec<u8> {
        let req = Message::parse(req).unwrap();
        let mut buf = vec![0u8; 512];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(req.method(), Class::Error),
            &req.transaction_id(),
        )
        .unwrap();
        w.error_code(
            code,
            if code == 401 {
                "Unauthorized"
            } else {
                "Stale Nonce"
            },
        )
        .unwrap();
        w.attribute(attr::REALM, REALM.as_bytes()).unwrap();
        w.attribute(attr::NONCE, self.nonce.as_bytes()).unwrap();
        if self.sha256 {
            // SHA-256 then MD5, no parameters (RFC 8489 §14.11).
            w.attribute(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
                .unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Verify a signed request: USERNAME, REALM, current NONCE and integrity with our key.
    fn check_signed(&self, req: &[u8]) {
        let m = Message::parse(req).unwrap();
        assert_eq!(m.get(attr::USERNAME).unwrap().value, USER.as_bytes());
        assert_eq!(m.get(attr::REALM).unwrap().value, REALM.as_bytes());
        assert_eq!(m.get(attr::NONCE).unwrap().value, self.nonce.as_bytes());
        let v = credentials::verify(&m, &self.key).expect("request integrity");
        if self.sha256 {
            assert_eq!(v, credentials::Verified::Sha256);
            assert!(m.get(attr::PASSWORD_ALGORITHM).is_some());
        }
    }

    /// A response to `req` of `class`, with `fill` adding attributes, signed with `key`.
    fn respond_with(
        &self,
        req: &[u8],
        class: Class,
        key: &Key,
        fill: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let req = Message::parse(req).unwrap();
        let mut buf = vec![0u8; 512];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(req.method(), class),
            &req.transaction_id(),
        )
        .unwrap();
        fill(&mut w);
        let integrity = if self.sha256 {
            Integrity::Sha256
        } else {
            Integrity::Sha1
        };
        credentials::sign(&mut w, key, integrity).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn success(&self, req: &[u8], fill: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        self.respond_with(req, Class::Success, &self.key, fill)
    }

    fn error(&self, req: &[u8], code: u16, reason: &str) -> Vec<u8> {
        self.respond_with(req, Class::Error, &self.key, |w| {
            w.error_code(code, reason).unwrap()
        })
    }

    fn allocate_ok(&self, req: &[u8], lifetime: u32) -> Vec<u8> {
        self.success(req, |w| {
            w.address(attr::XOR_RELAYED_ADDRESS, relayed()).unwrap();
            w.address(attr::XOR_MAPPED_ADDRESS, mapped()).unwrap();
            w.u32_attribute(attr::LIFETIME, lifetime).unwrap();
        })
    }

    /// Answer any request with success (Refresh keeps its asked lifetime, or 600 s).
    fn answer(&self, req: &[u8]) -> Vec<u8> {
        self.check_signed(req);
        let m = Message::parse(req).unwrap();
        match m.method() {
            proto::ALLOCATE => self.allocate_ok(req, 600),
            proto::REFRESH => {
                let lifetime = m
                    .get(attr::LIFETIME)
                    .map(|a| u32::from_be_bytes(a.value.try_into().unwrap()))
                    .unwrap_or(600);
                self.success(req, |w| w.u32_attribute(attr::LIFETIME, lifetime).unwrap())
            }
            _ => self.success(req, |_| {}),
        }
    }
}

fn config(transport: Transport) -> Config {
    Config::new(server_addr(), transport, USER, PASS)
}

fn transmits(c: &mut Client) -> Vec<Vec<u8>> {
    let mut v = vec![];
    while let Some(t) = c.poll_transmit() {
        assert_eq!(t.destination, server_addr());
        v.push(t.payload);
    }
    v
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn one(mut v: Vec<Vec<u8>>) -> Vec<u8> {
    assert_eq!(v.len(), 1, "expected exactly one transmit");
    v.remove(0)
}

fn method_of(bytes: &[u8]) -> u16 {
    Message::parse(bytes).unwrap().method()
}

/// Allocate through the 401 challenge; returns the client, allocated at `t0`.
fn allocated(server: &Server, transport: Transport, t0: Instant) -> Client {
    let mut c = Client::with_seed(config(transport), 7);
    c.allocate(t0).unwrap();
    let first = one(transmits(&mut c));
    c.handle_input(t0, &server.challenge(&first, 401));
    let second = one(transmits(&mut c));
    server.check_signed(&second);
    c.handle_input(t0, &server.allocate_ok(&second, 600));
    let ev = events(&mut c);
    assert!(matches!(ev.as_slice(), [Event::Allocated { .. }]), "{ev:?}");
    c
}

#[test]
fn allocate_401_then_success_rfc8656_7_1() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = Client::with_seed(config(Transport::Udp), 1);
    assert_eq!(c.state(), State::Idle);
    c.allocate(t0).unwrap();
    assert_eq!(
        c.allocate(t0),
        Err(ClientError::BadState(State::Allocating))
    );
    let first = one(transmits(&mut c));
    let m = Message::parse(&first).unwrap();
    assert_eq!(
        m.message_type(),
        message_type(proto::ALLOCATE, Class::Request)
    );
    assert_eq!(
        m.get(attr::REQUESTED_TRANSPORT).unwrap().value,
        &[17, 0, 0, 0]
    );
    assert!(
        m.get(attr::USERNAME).is_none(),
        "first Allocate is unsigned"
    );
    assert!(m.get(attr::MESSAGE_INTEGRITY).is_none());

    c.handle_input(t0, &server.challenge(&first, 401));
    assert!(events(&mut c).is_empty());
    let second = one(transmits(&mut c));
    server.check_signed(&second);
    let m2 = Message::parse(&second).unwrap();
    assert_ne!(m2.transaction_id(), m.transaction_id(), "a new transaction");
    assert!(m2.get(attr::REQUESTED_TRANSPORT).is_some());

    c.handle_input(t0, &server.allocate_ok(&second, 600));
    assert_eq!(
        events(&mut c),
        [Event::Allocated {
            relayed: relayed(),
            mapped: Some(mapped()),
            lifetime: Duration::from_secs(600)
        }]
    );
    assert_eq!(c.state(), State::Allocated);
    assert_eq!(c.relayed_address(), Some(relayed()));
    assert_eq!(c.mapped_address(), Some(mapped()));
    assert_eq!(c.lifetime(), Duration::from_secs(600));
    assert!(transmits(&mut c).is_empty());
}

#[test]
fn address_family_and_lifetime_are_requested() {
    let mut cfg = config(Transport::Udp);
    cfg.family = Some(AddressFamily::V6);
    cfg.lifetime = Some(Duration::from_secs(1200));
    let mut c = Client::with_seed(cfg, 1);
    let t0 = Instant::now();
    c.allocate(t0).unwrap();
    let req = one(transmits(&mut c));
    let m = Message::parse(&req).unwrap();
    assert_eq!(
        m.get(attr::REQUESTED_ADDRESS_FAMILY).unwrap().value,
        &[2, 0, 0, 0]
    );
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, &1200u32.to_be_bytes());
}

#[test]
fn sha256_is_used_when_offered_rfc8489_9_2_4() {
    let server = Server::with_sha256();
    let t0 = Instant::now();
    let c = allocated(&server, Transport::Udp, t0);
    assert_eq!(c.state(), State::Allocated);
}

#[test]
fn same_seed_same_transaction_ids() {
    let run = |seed| {
        let mut c = Client::with_seed(config(Transport::Udp), seed);
        c.allocate(Instant::now()).unwrap();
        Message::parse(&one(transmits(&mut c)))
            .unwrap()
            .transaction_id()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn wrong_password_is_an_error_event() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = Client::with_seed(Config::new(server_addr(), Transport::Udp, USER, "wrong"), 1);
    c.allocate(t0).unwrap();
    let first = one(transmits(&mut c));
    c.handle_input(t0, &server.challenge(&first, 401));
    let second = one(transmits(&mut c));
    let m = Message::parse(&second).unwrap();
    assert!(credentials::verify(&m, &server.key).is_err());
    // The server rejects the signature with another 401.
    c.handle_input(t0, &server.challenge(&second, 401));
    assert_eq!(
        events(&mut c),
        [
            Event::Failed {
                request: Request::Allocate,
                error: ClientError::Unauthenticated
            },
            Event::Closed {
                reason: Some(ClientError::Unauthenticated)
            }
        ]
    );
    assert_eq!(c.state(), State::Closed);
    assert!(transmits(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn stale_nonce_is_retried_with_the_new_nonce_for_every_method() {
    let mut server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.create_permission(t0, peer()).unwrap();
    c.bind_channel(t0, "203.0.113.6:9".parse().unwrap())
        .unwrap();
    c.refresh(t0).unwrap();
    let reqs = transmits(&mut c);
    assert_eq!(reqs.len(), 3);
    server.nonce = "nonce-2".into();
    for r in &reqs {
        c.handle_input(t0, &server.challenge(r, 438));
    }
    let retries = transmits(&mut c);
    assert_eq!(retries.len(), 3);
    let mut methods: Vec<u16> = retries.iter().map(|r| method_of(r)).collect();
    methods.sort();
    assert_eq!(
        methods,
        [
            proto::REFRESH,
            proto::CREATE_PERMISSION,
            proto::CHANNEL_BIND
        ]
    );
    for r in &retries {
        server.check_signed(r); // carries nonce-2
        c.handle_input(t0, &server.answer(r));
    }
    let ev = events(&mut c);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev.contains(&Event::PermissionCreated { peer: peer().ip() }));
    assert!(ev.contains(&Event::Refreshed {
        lifetime: Duration::from_secs(600)
    }));
    assert!(ev.contains(&Event::ChannelBound {
        peer: "203.0.113.6:9".parse().unwrap(),
        channel: 0x4000
    }));
}

#[test]
fn endless_stale_nonce_gives_up() {
    let mut server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.create_permission(t0, peer()).unwrap();
    for i in 0..=MAX_STALE_NONCE_RETRIES {
        let r = one(transmits(&mut c));
        server.nonce = format!("n{i}");
        c.handle_input(t0, &server.challenge(&r, 438));
    }
    assert!(transmits(&mut c).is_empty());
    assert_eq!(
        events(&mut c),
        [Event::Failed {
            request: Request::CreatePermission { peer: peer() },
            error: ClientError::StaleNonceLoop {
                retries: MAX_STALE_NONCE_RETRIES
            }
        }]
    );
    assert!(!c.has_permission(peer().ip()));
}

#[test]
fn allocate_error_codes_are_typed() {
    let alt: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    let cases: Vec<(u16, ClientError)> = vec![
        (
            300,
            ClientError::TryAlternate {
                alternate: Some(alt),
            },
        ),
        (
            403,
            ClientError::Forbidden {
                reason: "nope".into(),
            },
        ),
        (437, ClientError::AllocationMismatch),
        (440, ClientError::AddressFamilyNotSupported),
        (441, ClientError::WrongCredentials),
        (442, ClientError::UnsupportedTransport),
        (486, ClientError::AllocationQuotaReached),
        (508, ClientError::InsufficientCapacity),
        (
            599,
            ClientError::Other {
                code: 599,
                reason: "nope".into(),
            },
        ),
    ];
    for (code, expected) in cases {
        let server = Server::new();
        let t0 = Instant::now();
        let mut c = Client::with_seed(config(Transport::Udp), 3);
        c.allocate(t0).unwrap();
        let first = one(transmits(&mut c));
        c.handle_input(t0, &server.challenge(&first, 401));
        let second = one(transmits(&mut c));
        let resp = server.respond_with(&second, Class::Error, &server.key, |w| {
            w.error_code(code, "nope").unwrap();
            w.address(attr::ALTERNATE_SERVER, alt).unwrap();
        });
        c.handle_input(t0, &resp);
        assert_eq!(expected.code(), Some(code));
        assert_eq!(
            events(&mut c),
            [
                Event::Failed {
                    request: Request::Allocate,
                    error: expected.clone()
                },
                Event::Closed {
                    reason: Some(expected)
                }
            ],
            "code {code}"
        );
    }
}

#[test]
fn unsigned_300_before_credentials_is_reported() {
    // A server that redirects before any challenge (RFC 8489 §10).
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = Client::with_seed(config(Transport::Udp), 3);
    c.allocate(t0).unwrap();
    let first = Message::parse(&one(transmits(&mut c)))
        .unwrap()
        .transaction_id();
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(
        &mut buf,
        message_type(proto::ALLOCATE, Class::Error),
        &first,
    )
    .unwrap();
    w.error_code(300, "Try Alternate").unwrap();
    let alt: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    w.address(attr::ALTERNATE_SERVER, alt).unwrap();
    let n = w.finish();
    let _ = &server;
    c.handle_input(t0, &buf[..n]);
    let ev = events(&mut c);
    assert_eq!(
        ev[0],
        Event::Failed {
            request: Request::Allocate,
            error: ClientError::TryAlternate {
                alternate: Some(alt)
            }
        }
    );
}

#[test]
fn permission_and_channel_errors_do_not_end_the_allocation() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.create_permission(t0, peer()).unwrap();
    let r = one(transmits(&mut c));
    c.handle_input(t0, &server.error(&r, 403, "Forbidden IP"));
    let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
    assert_eq!(c.bind_channel(t0, other), Ok(0x4000));
    let r = one(transmits(&mut c));
    c.handle_input(t0, &server.error(&r, 508, "Insufficient Capacity"));
    assert_eq!(
        events(&mut c),
        [
            Event::Failed {
                request: Request::CreatePermission { peer: peer() },
                error: ClientError::Forbidden {
                    reason: "Forbidden IP".into()
                }
            },
            Event::Failed {
                request: Request::ChannelBind {
                    peer: other,
                    channel: 0x4000
                },
                error: ClientError::InsufficientCapacity
            }
        ]
    );
    assert_eq!(c.state(), State::Allocated);
    assert_eq!(c.channel(other), None);
    // The number is free again.
    assert_eq!(c.bind_channel(t0, other), Ok(0x4000));
}

#[test]
fn refresh_437_means_the_allocation_is_lost() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.refresh(t0).unwrap();
    let r = one(transmits(&mut c));
    c.handle_input(t0, &server.error(&r, 437, "Allocation Mismatch"));
    assert_eq!(
        events(&mut c),
        [
            Event::Failed {
                request: Request::Refresh { lifetime: None },
                error: ClientError::AllocationMismatch
            },
            Event::Closed {
                reason: Some(ClientError::AllocationMismatch)
            }
        ]
    );
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn close_deallocates_with_lifetime_zero() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.close(t0);
    assert_eq!(c.state(), State::Closing);
    let r = one(transmits(&mut c));
    let m = Message::parse(&r).unwrap();
    assert_eq!(m.method(), proto::REFRESH);
    assert_eq!(m.get(attr::LIFETIME).unwrap().value, &[0, 0, 0, 0]);
    c.handle_input(t0, &server.answer(&r));
    assert_eq!(events(&mut c), [Event::Closed { reason: None }]);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.send_to(t0, peer(), b"x"), Err(ClientError::NotAllocated));
}

/// Run the client against an always-answering server for `span` of virtual time, jumping
/// from timeout to timeout. Returns every request with the time it was sent.
fn run_virtual(
    c: &mut Client,
    server: &Server,
    t0: Instant,
    span: Duration,
) -> Vec<(Duration, u16, Vec<u8>)> {
    let mut log = vec![];
    let mut now = t0;
    for _ in 0..10_000 {
        for r in transmits(c) {
            if proto::framing(&r) != proto::Framing::Stun {
                continue;
            }
            let m = Message::parse(&r).unwrap();
            if m.class() != Class::Request {
                continue;
            }
            log.push((now - t0, m.method(), r.clone()));
            c.handle_input(now, &server.answer(&r));
        }
        for e in events(c) {
            assert!(
                !matches!(e, Event::Failed { .. } | Event::Closed { .. }),
                "{e:?}"
            );
        }
        let next = c.poll_timeout().expect("an allocation always has a timer");
        assert!(next >= now, "timers never go back");
        if next - t0 > span {
            return log;
        }
        now = next;
        c.handle_timeout(now);
    }
    panic!("too many steps");
}

#[test]
fn refresh_timers_fire_at_the_right_virtual_times() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(540)));
    c.create_permission(t0, peer()).unwrap();
    let chan_peer: SocketAddr = "203.0.113.77:5000".parse().unwrap();
    c.bind_channel(t0, chan_peer).unwrap();
    let log = run_virtual(&mut c, &server, t0, Duration::from_secs(3600));
    let times = |method: u16, want: Option<IpAddr>| -> Vec<u64> {
        log.iter()
            .filter(|(_, m, r)| {
                *m == method
                    && want.is_none_or(|ip| {
                        Message::parse(r)
                            .unwrap()
                            .address(attr::XOR_PEER_ADDRESS)
                            .unwrap()
                            .unwrap()
                            .ip()
                            == ip
                    })
            })
            .map(|(t, _, _)| t.as_secs())
            .collect()
    };
    // Allocation (600 s): refreshed a minute before it ends, every time.
    let refreshes = times(proto::REFRESH, None);
    assert_eq!(refreshes, [540, 1080, 1620, 2160, 2700, 3240]);
    // Permission (300 s, RFC 8656 §9): every 240 s.
    let perms = times(proto::CREATE_PERMISSION, Some(peer().ip()));
    assert_eq!(perms[..4], [0, 240, 480, 720]);
    assert!(perms.windows(2).all(|w| w[1] - w[0] < 300));
    // Channel (600 s, §12): every 540 s; its permission is refreshed within 300 s as well.
    let chans = times(proto::CHANNEL_BIND, None);
    assert_eq!(chans, [0, 540, 1080, 1620, 2160, 2700, 3240]);
    let chan_perms = times(proto::CREATE_PERMISSION, Some(chan_peer.ip()));
    let mut installs: Vec<u64> = chans.iter().chain(&chan_perms).copied().collect();
    installs.sort();
    assert!(
        installs.windows(2).all(|w| w[1] - w[0] < 300),
        "{installs:?}"
    );
    assert_eq!(c.state(), State::Allocated);
}

#[test]
fn short_lifetime_refreshes_at_three_quarters() {
    assert_eq!(
        refresh_delay(Duration::from_secs(600)),
        Duration::from_secs(540)
    );
    assert_eq!(
        refresh_delay(Duration::from_secs(60)),
        Duration::from_secs(45)
    );
    assert_eq!(refresh_delay(Duration::ZERO), Duration::ZERO);
}

#[test]
fn allocation_expires_when_refreshes_go_unanswered() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    let mut now = t0;
    let mut closed = None;
    for _ in 0..1000 {
        let _ = transmits(&mut c);
        for e in events(&mut c) {
            if let Event::Closed { reason } = e {
                closed = Some((now - t0, reason));
            }
        }
        let Some(next) = c.poll_timeout() else { break };
        now = next;
        c.handle_timeout(now);
    }
    assert_eq!(
        closed,
        Some((Duration::from_secs(600), Some(ClientError::Expired)))
    );
}

/// Send times of an unanswered Allocate, and when it failed.
fn unanswered(transport: Transport) -> (Vec<u128>, Duration, Vec<Event>) {
    let t0 = Instant::now();
    let mut c = Client::with_seed(config(transport), 9);
    c.allocate(t0).unwrap();
    let mut now = t0;
    let mut sends = vec![];
    for _ in 0..100 {
        for _ in transmits(&mut c) {
            sends.push((now - t0).as_millis());
        }
        let ev = events(&mut c);
        if !ev.is_empty() {
            return (sends, now - t0, ev);
        }
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    panic!("never timed out");
}

#[test]
fn udp_retransmits_on_the_rfc8489_schedule() {
    let (sends, end, ev) = unanswered(Transport::Udp);
    assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(end, Duration::from_millis(39500));
    assert_eq!(
        ev[0],
        Event::Failed {
            request: Request::Allocate,
            error: ClientError::Timeout { sends: 7 }
        }
    );
}

#[test]
fn tcp_and_tls_send_once_and_wait_39_5_s() {
    for t in [Transport::Tcp, Transport::Tls] {
        let (sends, end, ev) = unanswered(t);
        assert_eq!(sends, [0]);
        assert_eq!(end, Duration::from_millis(39500));
        assert_eq!(
            ev[0],
            Event::Failed {
                request: Request::Allocate,
                error: ClientError::Timeout { sends: 1 }
            }
        );
    }
}

#[test]
fn send_indication_until_the_channel_is_bound_then_channel_data() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let server = Server::new();
        let t0 = Instant::now();
        let mut c = allocated(&server, transport, t0);
        // No permission yet: one is requested and the data waits for it.
        c.send_to(t0, peer(), b"queued").unwrap();
        let r = one(transmits(&mut c));
        assert_eq!(method_of(&r), proto::CREATE_PERMISSION);
        c.handle_input(t0, &server.answer(&r));
        let sent = one(transmits(&mut c));
        let m = Message::parse(&sent).unwrap();
        assert_eq!(
            m.message_type(),
            message_type(proto::SEND, Class::Indication)
        );
        assert_eq!(m.address(attr::XOR_PEER_ADDRESS), Some(Ok(peer())));
        assert_eq!(m.get(attr::DATA).unwrap().value, b"queued");
        // Channel requested but not confirmed: still a Send indication.
        assert_eq!(c.bind_channel(t0, peer()), Ok(0x4000));
        let bind = one(transmits(&mut c));
        c.send_to(t0, peer(), b"hello").unwrap();
        let sent = one(transmits(&mut c));
        assert_eq!(method_of(&sent), proto::SEND);
        c.handle_input(t0, &server.answer(&bind));
        assert_eq!(c.channel(peer()), Some((0x4000, true)));
        c.send_to(t0, peer(), b"hello").unwrap();
        let sent = one(transmits(&mut c));
        let expected: &[u8] = match transport {
            Transport::Udp => b"\x40\x00\x00\x05hello",
            _ => b"\x40\x00\x00\x05hello\0\0\0", // padded on streams (§12.5)
        };
        assert_eq!(sent, expected);
        // The next peer gets the next number.
        let p2: SocketAddr = "203.0.113.5:7001".parse().unwrap();
        assert_eq!(c.bind_channel(t0, p2), Ok(0x4001));
        assert_eq!(c.bind_channel(t0, p2), Ok(0x4001), "idempotent");
    }
}

#[test]
fn peer_of_the_other_family_is_refused() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    let v6: SocketAddr = "[2001:db8::5]:1".parse().unwrap();
    assert_eq!(
        c.send_to(t0, v6, b"x"),
        Err(ClientError::PeerFamilyMismatch(v6))
    );
    assert_eq!(
        c.create_permission(t0, v6),
        Err(ClientError::PeerFamilyMismatch(v6))
    );
}

#[test]
fn data_indication_and_channel_data_are_delivered() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.bind_channel(t0, peer()).unwrap();
    let bind = one(transmits(&mut c));
    c.handle_input(t0, &server.answer(&bind));
    let _ = events(&mut c);
    // A Data indication (RFC 8656 §11.4).
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(
        &mut buf,
        message_type(proto::DATA, Class::Indication),
        &[4; 12],
    )
    .unwrap();
    let other: SocketAddr = "203.0.113.8:1234".parse().unwrap();
    w.address(attr::XOR_PEER_ADDRESS, other).unwrap();
    w.attribute(attr::DATA, b"via indication").unwrap();
    let n = w.finish();
    c.handle_input(t0, &buf[..n]);
    // ChannelData, with UDP padding after the data (§12.5: ignored).
    c.handle_input(t0, b"\x40\x00\x00\x03abc\0");
    // ChannelData on a channel we never bound: dropped.
    c.handle_input(t0, b"\x40\x07\x00\x03abc");
    assert_eq!(
        events(&mut c),
        [
            Event::Data {
                peer: other,
                data: b"via indication".to_vec()
            },
            Event::Data {
                peer: peer(),
                data: b"abc".to_vec()
            }
        ]
    );
}

#[test]
fn hostile_responses_are_ignored_without_panic() {
    let server = Server::new();
    let t0 = Instant::now();
    let mut c = allocated(&server, Transport::Udp, t0);
    c.create_permission(t0, peer()).unwrap();
    let req = one(transmits(&mut c));
    let good = server.answer(&req);

    // Truncated at every length.
    for n in 0..good.len() {
        c.handle_input(t0, &good[..n]);
    }
    // Signed with the wrong key.
    let wrong = Key::long_term(USER, REALM, "other", PasswordAlgorithm::Md5).unwrap();
    c.handle_input(
        t0,
        &server.respond_with(&req, Class::Success, &wrong, |_| {}),
    );
    // Not signed at all.
    let mut unsigned = [0u8; 64];
    let id = Message::parse(&req).unwrap().transaction_id();
    let w = MessageWriter::new(
        &mut unsigned,
        message_type(proto::CREATE_PERMISSION, Class::Success),
        &id,
    )
    .unwrap();
    let n = w.finish();
    c.handle_input(t0, &unsigned[..n]);
    // An error response that would kill the permission, unsigned: ignored too.
    let mut forged = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut forged,
        message_type(proto::CREATE_PERMISSION, Class::Error),
        &id,
    )
    .unwrap();
    w.error_code(403, "Forbidden").unwrap();
    let n = w.finish();
    c.handle_input(t0, &forged[..n]);
    // A valid response to another transaction.
    let mut other = req.clone();
    other[8] ^= 0xFF;
    c.handle_input(t0, &server.success(&other, |_| {}));
    // Every single-bit flip of the good answer, and garbage. (Flips in the FINGERPRINT
    // attribute's header are left out: they leave an authentic message with an unknown
    // trailing attribute, which RFC 8489 §14.5 says to ignore. Flips in its value must fail.)
    let fp = good.len() - 8;
    for i in (0..good.len() * 8).filter(|i| !(fp..fp + 4).contains(&(i / 8))) {
        let mut b = good.clone();
        b[i / 8] ^= 1 << (i % 8);
        c.handle_input(t0, &b);
        let _ = events(&mut c);
    }
    let mut x: u32 = 1;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        c.handle_input(t0, &bytes);
    }
    // Data events from garbage are possible (they are unauthenticated); nothing else is.
    assert!(
        events(&mut c)
            .iter()
            .all(|e| matches!(e, Event::Data { .. })),
    );
    assert!(!c.has_permission(peer().ip()));
    // The real answer still works.
    c.handle_input(t0, &good);
    assert_eq!(
        events(&mut c),
        [Event::PermissionCreated { peer: peer().ip() }]
    );
    assert!(c.has_permission(peer().ip()));
}

/// Advance to `now` and answer what the client sends: everything succeeds except ChannelBind
/// when `bind_fails`. Returns the ChannelBind requests seen (their channel numbers).
fn step(c: &mut Client, server: &Server, now: Instant, bind_fails: bool) -> Vec<u16> {
    c.handle_timeout(now);
    let mut binds = vec![];
    for r in transmits(c) {
        let m = Message::parse(&r).unwrap();
        if m.method() == proto::CHANNEL_BIND {
            let v = m.get(attr::CHANNEL_NUMBER).unwrap().value;
            binds.push(u16::from_be_bytes([v[0], v[1]]));
            if bind_fails {
                c.handle_input(now, &server.error(&r, 508, "Insufficient Capacity"));
                continue;
            }
        }
        c.handle_input(now, &server.answer(&r));
    }
    binds
}

#[test]
fn failed_channel_refresh_keeps_the_number_and_its_data_rfc8656_12_1() {
    let server = Server::new();
    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let mut c = allocated(&server, Transport::Udp, t0);
    assert_eq!(c.bind_channel(t0, peer()), Ok(0x4000));
    assert_eq!(step(&mut c, &server, t0, false), [0x4000]);
    assert_eq!(c.channel(peer()), Some((0x4000, true)));
    let _ = events(&mut c);
    // The refresh at 540 s fails: the server still holds the binding until 600 s.
    assert_eq!(step(&mut c, &server, secs(540), true), [0x4000]);
    assert!(events(&mut c).iter().any(|e| matches!(
        e,
        Event::Failed {
            request: Request::ChannelBind { .. },
            ..
        }
    )));
    assert_eq!(
        c.channel(peer()),
        Some((0x4000, false)),
        "reserved, unbound"
    );
    // Its ChannelData is still the peer's data.
    c.handle_input(secs(541), b"\x40\x00\x00\x03abc");
    assert_eq!(
        events(&mut c),
        [Event::Data {
            peer: peer(),
            data: b"abc".to_vec()
        }]
    );
    // Another peer does not get the reserved number.
    let other: SocketAddr = "203.0.113.9:1".parse().unwrap();
    assert_eq!(c.bind_channel(secs(541), other), Ok(0x4001));
    assert_eq!(step(&mut c, &server, secs(541), false), [0x4001]);
    // Retried while the server's binding lives; success binds it again.
    assert!(c.poll_timeout().unwrap() <= secs(550));
    assert_eq!(step(&mut c, &server, secs(550), false), [0x4000]);
    assert_eq!(c.channel(peer()), Some((0x4000, true)));

    // Now let every attempt fail: retries stop when the server's binding ends (1150 s), the
    // number stays reserved through the 5-minute cool-down (until 1450 s), then is free.
    let mut t = 1090;
    let mut retried = 0;
    while t < 1440 {
        let binds = step(&mut c, &server, secs(t), true);
        retried += binds.iter().filter(|n| **n == 0x4000).count();
        t += 10;
    }
    assert_eq!(
        retried, 6,
        "the refresh at 1090 s and retries every 10 s before 1150 s"
    );
    assert_eq!(c.channel(peer()), Some((0x4000, false)));
    let third: SocketAddr = "203.0.113.10:1".parse().unwrap();
    assert_eq!(
        c.bind_channel(secs(1440), third),
        Ok(0x4002),
        "cooling down"
    );
    let _ = step(&mut c, &server, secs(1440), false);
    c.handle_timeout(secs(1450));
    assert_eq!(c.channel(peer()), None, "released after the cool-down");
    let fourth: SocketAddr = "203.0.113.11:1".parse().unwrap();
    assert_eq!(c.bind_channel(secs(1450), fourth), Ok(0x4000));
}
